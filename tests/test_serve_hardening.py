"""Hardening of `mmfuse serve` over real HTTP: every bad input is a 4xx JSON naming the field."""
from __future__ import annotations

import base64
import io
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from mmfuse import Predictor
from mmfuse.serve import ServeSettings, create_app
from mmfuse.serve.local import running
from test_serve import QUESTION, build_tiny_model, wait_ready

TOKEN = "test-token-0123456789abcdef"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("hardening"))


@pytest.fixture(scope="module")
def server(tiny_model):
    settings = ServeSettings(model_dir=tiny_model[0], max_body_bytes=256 * 1024, max_pixels=1_000_000,
                             max_text_chars=500, max_rows=8)
    with running(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        wait_ready(client)
        yield client


def png_bytes(size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A ~70-byte PNG whose header declares 10 billion pixels (its pixel data is never there)."""
    def chunk(tag: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def refused(response: httpx.Response, status: int, field: str | None, says: str = "") -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["field"] == field, body
    assert says.lower() in body["message"].lower(), body
    return body


# ----- bodies and images -------------------------------------------------------------------------

def test_oversized_body_is_413_announced_or_streamed(server):
    big = b"x" * (300 * 1024)
    refused(server.post("/predict", content=big, headers={"content-type": "application/json"}),
            413, "body", "too large")

    def chunks():  # no Content-Length: the cap must hold while streaming
        for _ in range(300):
            yield b"x" * 1024

    refused(server.post("/predict", content=chunks(), headers={"content-type": "application/json"}),
            413, "body", "too large")
    refused(server.post("/predict/upload", files={"image": ("big.png", big, "image/png")}), 413, "body")


@pytest.mark.parametrize("route", ["json", "upload"])
@pytest.mark.parametrize("data, status, says", [
    (bomb_png(), 422, "too large"),
    (b"<!doctype html><html><body>login</body></html>", 422, "HTML"),
    (png_bytes()[:60], 422, "truncated"),
    (b"\x00\x01\x02garbage" * 10, 415, "not an image"),
])
def test_bad_images_name_the_field(server, route, data, status, says):
    if route == "json":
        response = server.post("/predict", json={"rows": [{"text": QUESTION}, {"image": b64(data)}]})
        refused(response, status, "rows[1].image", says)
    else:
        response = server.post("/predict/upload", files={"image": ("photo.png", data, "image/png")})
        refused(response, status, "image", says)


def test_image_format_outside_the_allowlist_is_415(server):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="TIFF")
    body = refused(server.post("/predict", json={"rows": [{"image": b64(buffer.getvalue())}]}), 415, "rows[0].image")
    assert "TIFF" in body["message"] and "PNG" in body["message"]


def test_bad_base64_and_data_urls(server):
    refused(server.post("/predict", json={"rows": [{"image": "not base64 !!"}]}), 422, "rows[0].image", "base64")
    data_url = "data:image/png;base64," + b64(png_bytes())
    assert server.post("/predict", json={"rows": [{"image": data_url, "text": QUESTION}]}).status_code == 200


# ----- texts and JSON ---------------------------------------------------------------------------

def test_empty_and_huge_texts(server):
    refused(server.post("/predict", json={"rows": [{"text": "   "}]}), 422, "rows[0].text", "empty text")
    refused(server.post("/predict", json={"rows": [{"image": b64(png_bytes()), "text": "a" * 1_000_000}]}),
            413, "body")  # 1 MB of text is over this server's 256 KiB body cap
    refused(server.post("/predict", json={"rows": [{"text": "a" * 100_000}]}), 422, "rows[0].text", "too long")
    refused(server.post("/predict/upload", data={"text": "b" * 200_000}), 422, "text", "too long")
    refused(server.post("/predict/upload", data={"text": ""}), 422, "image", "neither")


def test_one_megabyte_text_under_the_default_body_cap(tiny_model):
    with running(create_app(ServeSettings(model_dir=tiny_model[0]))) as url, \
            httpx.Client(base_url=url, timeout=30) as client:
        wait_ready(client)
        response = client.post("/predict", json={"rows": [{"text": "a" * 1_000_000}]})
        refused(response, 422, "rows[0].text", "too long: 1,000,000 characters")


@pytest.mark.parametrize("body, field", [
    ({"rows": [{"text": 5}]}, "rows[0].text"),
    ({"rows": [{"image": ["a"]}]}, "rows[0].image"),
    ({"rows": {"text": QUESTION}}, "rows"),
    ({"rows": [{"text": QUESTION}], "top_k": "3"}, "top_k"),
    ({"rows": [{"text": QUESTION}], "top_k": 0}, "top_k"),
    ({"rows": []}, "rows"),
    ({"rows": [{"txt": QUESTION}]}, "rows[0].txt"),
    ({"rows": [{}]}, "rows[0].image"),
    ({"rows": [{"text": QUESTION}] * 9}, "rows"),
    ([1, 2], "body"),
])
def test_wrong_json_is_422_naming_the_field(server, body, field):
    body = refused(server.post("/predict", json=body), 422, field)
    assert body["error"] == "invalid_input"


def test_malformed_json_and_wrong_content_type(server):
    assert server.post("/predict", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
    response = server.post("/predict", content=b"rows=1", headers={"content-type": "text/plain"})
    assert 400 <= response.status_code < 500 and "error" in response.json()
    assert server.get("/nowhere").json()["error"] == "not_found"


# ----- auth ----------------------------------------------------------------------------------------

def test_token_is_required_and_checked(tiny_model):
    with running(create_app(ServeSettings(model_dir=tiny_model[0], token=TOKEN))) as url, \
            httpx.Client(base_url=url, timeout=30) as client:
        wait_ready(client)  # health stays open for probes
        body = {"rows": [{"text": QUESTION}]}
        missing = refused(client.post("/predict", json=body), 401, "Authorization", "missing")
        assert missing["error"] == "unauthorized"
        refused(client.post("/predict", json=body, headers={"Authorization": "Bearer wrong-token"}),
                401, "Authorization", "wrong")
        refused(client.get("/metrics"), 401, "Authorization")
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert client.post("/predict", json=body, headers=good).status_code == 200
        assert client.get("/info", headers=good).json()["auth"] is True


# ----- load -----------------------------------------------------------------------------------------

class SlowPredictor:
    """The real Predictor, with every prediction made `delay_s` slower (a stand-in for a big model)."""

    def __init__(self, predictor: Predictor, delay_s: float):
        self._predictor, self._delay_s = predictor, delay_s

    def __getattr__(self, name):
        return getattr(self._predictor, name)

    def predict_scores(self, data):
        time.sleep(self._delay_s)
        return self._predictor.predict_scores(data)


def test_a_full_queue_answers_503_with_retry_after(tiny_model):
    predictor = Predictor.load(tiny_model[0])
    settings = ServeSettings(model_dir=tiny_model[0], max_queue=2, max_batch=1, max_wait_ms=0)
    with running(create_app(settings, load=lambda: SlowPredictor(predictor, 0.5))) as url, \
            httpx.Client(base_url=url, timeout=30) as client:
        wait_ready(client)
        with ThreadPoolExecutor(10) as pool:
            responses = list(pool.map(lambda _: client.post("/predict", json={"rows": [{"text": QUESTION}]}),
                                      range(10)))
        metrics = client.get("/metrics").text
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) == {200, 503} and statuses.count(200) >= 2, statuses
    for response in responses:
        if response.status_code == 503:
            assert int(response.headers["retry-after"]) >= 1
            assert response.json()["error"] == "overloaded"
    assert f'mmfuse_errors_total{{kind="overloaded"}} {statuses.count(503)}.0' in metrics


def test_a_slow_answer_times_out_with_504(tiny_model):
    predictor = Predictor.load(tiny_model[0])
    settings = ServeSettings(model_dir=tiny_model[0], timeout_s=0.3)
    with running(create_app(settings, load=lambda: SlowPredictor(predictor, 1.0))) as url, \
            httpx.Client(base_url=url, timeout=30) as client:
        wait_ready(client)
        response = client.post("/predict", json={"rows": [{"text": QUESTION}]})
        assert response.status_code == 504 and response.json()["error"] == "timeout"
        time.sleep(1.0)  # the abandoned job finishes; the server keeps serving
        assert client.get("/health/ready").status_code == 200
        assert 'mmfuse_errors_total{kind="timeout"} 1.0' in client.get("/metrics").text


# ----- property-based: schemathesis against the live OpenAPI schema ---------------------------------

def test_schemathesis_finds_no_server_errors(tiny_model, tmp_path):
    cli = shutil.which("schemathesis", path=os.path.dirname(sys.executable))
    assert cli, "schemathesis is a declared dependency"
    with running(create_app(ServeSettings(model_dir=tiny_model[0], token=TOKEN))) as url, \
            httpx.Client(base_url=url, timeout=30) as client:
        wait_ready(client)
        result = subprocess.run(
            [cli, "run", f"{url}/openapi.json", "--checks", "not_a_server_error", "--max-examples", "25",
             "--seed", "1", "--header", f"Authorization: Bearer {TOKEN}", "--request-timeout", "20",
             "--phases", "examples,coverage,fuzzing"],
            capture_output=True, text=True, timeout=120, cwd=tmp_path)
        metrics = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert 'status="500"' not in metrics
    assert 'mmfuse_requests_total{endpoint="/predict",status="422"}' in metrics  # it did send bad input
