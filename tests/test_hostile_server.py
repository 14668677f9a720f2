"""`mmfuse serve` against hostile clients, over real HTTP (uvicorn on loopback) with a real model.

One case per finding: a request that must not fail its neighbours, inputs that cost far more
memory or time than their size says, slow clients, shutdown with a backlog, secrets in the
access log, a model that never loads, invalid UTF-8, and paths that are FIFOs or hold a NUL.
"""
from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from mmfuse import Predictor
from mmfuse.data.audio_media import open_audio
from mmfuse.data.media import MediaError, open_image
from mmfuse.modalities import MODALITIES
from mmfuse.serve import ServeSettings, create_app
from mmfuse.serve.batcher import MicroBatcher
from mmfuse.serve.local import free_port, running
from mmfuse.serve.server import redact_query
from test_serve import QUESTION, build_tiny_model, wait_ready
from test_serve_hardening import SlowPredictor, b64, refused

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("hostile"))[0]


@pytest.fixture(scope="module")
def server(tiny_model):
    settings = ServeSettings(model_dir=tiny_model, max_wait_ms=50, header_timeout_s=0.5, body_timeout_s=0.5)
    with running(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        wait_ready(client)
        yield client


def big_png(side: int = 5000) -> bytes:
    """3 kB of 1-bit PNG that decodes to side x side pixels (25 M for 5000)."""
    buffer = io.BytesIO()
    Image.new("1", (side, side), 0).save(buffer, format="PNG")
    return buffer.getvalue()


def image_bytes(size: tuple[int, int], fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (30, 60, 220)).save(buffer, format=fmt)
    return buffer.getvalue()


# ----- 1. one request must not fail its neighbours --------------------------------------------------

@pytest.mark.parametrize("text", ["\ud800 what", "what \udfff", "\udc00\ud800 reversed"])
def test_lone_surrogates_are_422_naming_the_field(server, text):
    body = json.dumps({"rows": [{"text": QUESTION}, {"text": text}]})  # JSON escapes them: \ud800
    answer = refused(server.post("/predict", content=body, headers=JSON), 422, "rows[1].text", "lone surrogate")
    assert answer["error"] == "invalid_input"


def test_a_poison_request_does_not_fail_its_neighbours(server):
    alone = server.post("/predict", json={"rows": [{"text": QUESTION}]}).json()
    good = json.dumps({"rows": [{"text": QUESTION}]})
    poison = json.dumps({"rows": [{"text": "\ud800 what"}]})
    bodies = [poison if i % 8 == 3 else good for i in range(48)]
    with ThreadPoolExecutor(16) as pool:  # with max_wait_ms=50 they share forward passes
        responses = list(pool.map(lambda body: server.post("/predict", content=body, headers=JSON), bodies))
    for body, response in zip(bodies, responses):
        if body is poison:
            assert response.status_code == 422, response.text
        else:
            assert response.status_code == 200, response.text
            assert_same_answer(response.json(), alone)


def assert_same_answer(served: dict, alone: dict) -> None:
    """The same prediction and scores (to float noise: a batch's matrix sizes differ from one row's)."""
    (served,), (alone,) = served["predictions"], alone["predictions"]
    assert served["prediction"] == alone["prediction"]
    assert [t["label"] for t in served["top"]] == [t["label"] for t in alone["top"]]
    assert [t["score"] for t in served["top"]] == pytest.approx([t["score"] for t in alone["top"]], abs=1e-5)


def test_the_batcher_gives_an_exception_only_to_the_request_that_raised_it():
    passes: list[list[str]] = []

    def run(rows: list[str]) -> list[str]:
        passes.append(rows)
        if "poison" in rows:
            raise ValueError("cannot encode this row")
        return [row.upper() for row in rows]

    async def scenario():
        batcher = MicroBatcher(run, max_batch=32, max_wait_s=0.2, max_queue=16)
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(rows) for rows in (["a"], ["b", "c"], ["poison"], ["d"])),
                                        return_exceptions=True)
        finally:
            await batcher.stop()

    results = asyncio.run(scenario())
    assert results[0] == ["A"] and results[1] == ["B", "C"] and results[3] == ["D"]
    assert isinstance(results[2], ValueError)
    assert passes[0] == ["a", "b", "c", "poison", "d"]  # they did share a pass, which failed


# ----- 2. memory and time far beyond the request's size ---------------------------------------------

def test_decoded_pixels_are_capped_per_request(tiny_model):
    settings = ServeSettings(model_dir=tiny_model, max_request_pixels=3_000_000)
    image = b64(image_bytes((1000, 1000), "PNG"))
    with running(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        wait_ready(client)
        assert client.post("/predict", json={"rows": [{"image": image}] * 3}).status_code == 200
        body = refused(client.post("/predict", json={"rows": [{"image": image}] * 4}), 413, "rows[3].image",
                       "max_request_pixels")
        assert body["error"] == "too_large" and "4,000,000 pixels" in body["message"]
        upload = client.post("/predict/upload", files={"image": ("big.png", big_png(2000), "image/png")})
        refused(upload, 413, "image", "max_request_pixels")  # 4 M pixels in one upload


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_an_upload_is_kept_only_as_large_as_the_model_needs(tmp_path, fmt):
    image = MODALITIES["image"]
    data = image_bytes((3000, 2000), fmt)
    limits = {"max_pixels": 25_000_000, "image_size": 16}  # what a server passes for a 16-pixel model
    kept = image.from_upload(data, "image", tmp_path, limits).value
    assert 64 <= min(kept.size) < 128, kept.size  # at least 4 x the model's side, at most twice that
    assert kept.getpixel((10, 10)) == pytest.approx((30, 60, 220), abs=3)
    assert image.decoded_pixels(data, limits) == (375 * 250 if fmt == "JPEG" else 3000 * 2000)  # JPEG: 1/8 draft
    stored = tmp_path / f"full.{fmt.lower()}"
    stored.write_bytes(data)
    assert open_image(stored, max_pixels=10**8).size == (3000, 2000)  # the default (training): in full


def test_decoding_counts_inside_the_timeout(tiny_model):
    settings = ServeSettings(model_dir=tiny_model, timeout_s=0.3, max_request_pixels=10**9)
    app = create_app(settings)
    rows = [{"image": b64(big_png())}] * 16  # 400 M pixels: seconds of decoding
    with running(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        wait_ready(client)
        started = time.monotonic()
        response = client.post("/predict", json={"rows": rows})
        took = time.monotonic() - started
        refused(response, 504, None, "no answer within 0.3 s")
        assert took < 1.0, f"answered after {took:.1f} s"
        deadline = time.monotonic() + 30
        while any(app.state.tmp.iterdir()):  # the abandoned decoding leaves no temp files behind
            assert time.monotonic() < deadline, list(app.state.tmp.iterdir())
            time.sleep(0.1)
        assert client.post("/predict", json={"rows": [{"text": QUESTION}]}).status_code == 200


# ----- 3. slow clients, shutdown, logs, a model that never loads, invalid UTF-8 ----------------------

def _connect(client: httpx.Client) -> socket.socket:
    return socket.create_connection((client.base_url.host, client.base_url.port), timeout=5)


def _read_all(sock: socket.socket) -> bytes:
    """What the server sends until it closes the connection (socket.timeout if it never does)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_slow_headers_are_cut_off(server):
    with _connect(server) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: appl")
        started = time.monotonic()
        assert _read_all(sock) == b""  # closed, with nothing to say: there is no request yet
        assert time.monotonic() - started < 3
    with _connect(server) as sock:  # a connection that never sends a byte
        assert _read_all(sock) == b""


def test_oversized_headers_are_refused_and_closed(server):
    with _connect(server) as sock:  # h11 refuses past 16 KiB of headers; the httptools guard does too
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: localhost\r\nX-Filler: " + b"a" * 20_000)
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    ok = server.post("/predict", json={"rows": [{"text": QUESTION}]}, headers={"X-Filler": "a" * 8_000})
    assert ok.status_code == 200, ok.text  # big but under the cap


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_both_protocols_cut_slow_headers_off(tiny_model, http):
    settings = ServeSettings(model_dir=tiny_model, header_timeout_s=0.3)
    app = create_app(settings, load=lambda: Predictor.load(tiny_model))
    with running(app, http=http) as url, httpx.Client(base_url=url, timeout=30) as client:
        with _connect(client) as sock:
            sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
            started = time.monotonic()
            assert _read_all(sock) == b"" and time.monotonic() - started < 3
        with _connect(client) as sock:  # a kept-alive connection: the next request's headers are timed too
            sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            sock.sendall(b"GET /health/live HTTP/1.1\r\nHo")
            started = time.monotonic()
            assert _read_all(sock) == b"" and time.monotonic() - started < 3


def test_a_slow_body_is_408_and_closed(server):
    with _connect(server) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"rows\": [")
        started = time.monotonic()
        answer = _read_all(sock)
        assert time.monotonic() - started < 3
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    assert json.loads(body) == {"error": "timeout", "field": "body",
                                "message": "request body not received within 0.5 s"}


def test_shutdown_answers_queued_requests_with_json_503(tiny_model):
    predictor = Predictor.load(tiny_model)
    settings = ServeSettings(model_dir=tiny_model, max_batch=1, max_wait_ms=0)
    app = create_app(settings, load=lambda: SlowPredictor(predictor, 1.0))
    with ThreadPoolExecutor(6) as pool:
        with running(app) as url:
            with httpx.Client(base_url=url) as client:
                wait_ready(client)
            asks = [pool.submit(httpx.post, f"{url}/predict", json={"rows": [{"text": QUESTION}]}, timeout=30)
                    for _ in range(6)]
            deadline = time.monotonic() + 10
            while app.state.batcher.depth() < 5:  # one in the model, five waiting
                assert time.monotonic() < deadline
                time.sleep(0.02)
            stopping = time.monotonic()
        stopped = time.monotonic() - stopping
        responses = [ask.result() for ask in asks]
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 503, 503, 503, 503, 503], [r.text for r in responses]
    for response in responses:
        if response.status_code == 503:
            assert response.json()["error"] == "shutting_down" and response.headers["retry-after"]
    assert stopped < 4, f"shutdown took {stopped:.1f} s: it waited for the backlog"


def test_credentials_in_the_query_string_never_reach_the_access_log(tiny_model):
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    with running(create_app(ServeSettings(model_dir=tiny_model)), log_level="info") as url:
        access = logging.getLogger("uvicorn.access")
        keep = Keep()
        access.addHandler(keep)
        try:
            assert httpx.get(f"{url}/health/live?token=s3cr3t-t0ken&api_key=k3y&x=1").status_code == 200
        finally:
            access.removeHandler(keep)
    line = next(r for r in records if "/health/live" in r)
    assert "s3cr3t" not in line and "k3y" not in line
    assert "token=[REDACTED]" in line and "api_key=[REDACTED]" in line and "x=1" in line


def test_redact_query_knows_credential_names():
    assert redact_query("/a?access_token=x&Api-Key=y&%74oken=z&page=2&monkey=3") == \
        "/a?access_token=[REDACTED]&Api-Key=[REDACTED]&%74oken=[REDACTED]&page=2&monkey=3"
    assert redact_query("/a") == "/a"


def test_live_reports_a_model_that_failed_to_load(tmp_path):
    with running(create_app(ServeSettings(model_dir=tmp_path / "nothing"))) as url, \
            httpx.Client(base_url=url, timeout=30) as client:
        deadline = time.monotonic() + 30
        while (live := client.get("/health/live")).status_code == 200:
            assert time.monotonic() < deadline, "live never reported the failed load"
            time.sleep(0.05)
        assert live.status_code == 503 and live.json()["status"] == "failed"


def test_mmfuse_serve_exits_non_zero_when_the_model_fails_to_load(tmp_path):
    broken = tmp_path / "model"
    broken.mkdir()
    (broken / "config.yaml").write_text("task: classification\n")  # a model dir without a model
    command = [sys.executable, "-m", "mmfuse.cli", "serve", str(broken), "--port", str(free_port())]
    result = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert result.returncode != 0
    assert "failed to load" in result.stderr


def test_invalid_utf8_in_a_multipart_text_is_422_naming_the_field(server):
    refused(server.post("/predict/upload", files={"text": (None, b"caf\xe9 what")}), 422, "text", "invalid UTF-8")
    good = server.post("/predict/upload", files={"text": (None, "café what".encode())})
    assert good.status_code == 200, good.text


def test_raw_invalid_bytes_in_json_are_422_naming_the_field(server):
    body = b'{"rows": [{"text": "' + QUESTION.encode() + b'"}, {"text": "\xff what"}]}'
    refused(server.post("/predict", content=body, headers=JSON), 422, "rows[1].text", "invalid UTF-8")
    in_a_key = server.post("/predict", content=b'{"rows": [{"te\xffxt": "what"}]}', headers=JSON)
    assert in_a_key.status_code == 422 and in_a_key.json()["field"].startswith("rows[0]")


# ----- files the data points at -------------------------------------------------------------------

@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_as_an_image_path_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "photo.png"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []

    def decode() -> None:
        try:
            open_image(fifo, max_pixels=1_000_000)
        except BaseException as error:  # noqa: BLE001 - inspected below
            outcome.append(error)

    worker = threading.Thread(target=decode, daemon=True)
    worker.start()
    worker.join(timeout=5)
    if worker.is_alive():  # blocked in open(): a writer releases it, so the test fails instead of hanging
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(timeout=5)
        pytest.fail("open_image blocked on a FIFO")
    assert isinstance(outcome[0], MediaError) and "FIFO" in str(outcome[0]), outcome


@pytest.mark.parametrize("open_media", [lambda p: open_image(p, max_pixels=1_000), open_audio])
def test_a_nul_byte_in_a_path_is_a_media_error(tmp_path, open_media):
    with pytest.raises(MediaError, match="path contains a NUL byte"):
        open_media(str(tmp_path / "a\x00b.png"))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_an_upload_is_stored_without_its_metadata(tmp_path, fmt):
    """EXIF with a GPS position and a camera owner's name: the stored upload keeps only pixels; an
    upload without metadata is stored byte for byte."""
    from PIL import Image

    picture = Image.new("RGB", (40, 30), (200, 40, 40))
    exif = Image.Exif()
    exif[0x013B] = "Jane Q. Photographer"  # Artist
    exif[0x8825] = {1: "N", 2: (52.0, 22.0, 30.0), 3: "E", 4: (4.0, 53.0, 0.0)}  # GPS IFD
    tagged, plain = io.BytesIO(), io.BytesIO()
    picture.save(tagged, format=fmt, exif=exif)
    picture.save(plain, format=fmt)
    assert b"Jane Q. Photographer" in tagged.getvalue()
    image = MODALITIES["image"]
    limits = {"max_pixels": 25_000_000}
    kept = Path(image.from_upload(tagged.getvalue(), "image", tmp_path, limits).path)
    stored = kept.read_bytes()
    assert b"Jane Q. Photographer" not in stored and b"Exif" not in stored
    with Image.open(kept) as reopened:
        assert not reopened.getexif() and reopened.size == (40, 30)
        assert reopened.convert("RGB").getpixel((5, 5)) == pytest.approx((200, 40, 40), abs=6)
    assert Path(image.from_upload(plain.getvalue(), "image", tmp_path, limits).path).read_bytes() == plain.getvalue()
