"""Hardening of `mmfuse serve` over real HTTP: every bad input is a 4xx JSON naming the field."""
from __future__ import annotations

import base64
import io
import json
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


# ----- the fast lane of POST /predict (serve/fastlane.py) answers exactly as FastAPI does -------------

LANE = {"content-type": "application/json"}             # taken by the fast lane
FASTAPI = {"content-type": "application/vnd.test+json"}  # JSON to FastAPI too, but not the lane's


@pytest.mark.parametrize("body", [
    json.dumps({"rows": [{"text": QUESTION}], "top_k": 2}).encode(),
    json.dumps({"rows": [{"image": "not base64 !!"}]}).encode(),
    json.dumps({"rows": [{"text": 5}]}).encode(), json.dumps({"rows": []}).encode(),
    json.dumps({"rows": [{}]}).encode(), json.dumps([1, 2]).encode(), b"null", b"", b"{not json",
    json.dumps({"rows": [{"text": QUESTION}], "top_k": "3"}).encode(),
    b'{"rows": [{"text": "\xff what"}]}',
], ids=lambda body: body[:30].decode("utf-8", "replace"))
def test_the_fast_lane_answers_as_fastapi_does(server, body):
    lane, plain = server.post("/predict", content=body, headers=LANE), server.post("/predict", content=body, headers=FASTAPI)
    assert lane.status_code == plain.status_code and lane.json() == plain.json(), (lane.text, plain.text)


def test_the_fast_lane_checks_the_token_where_fastapi_does(tiny_model):
    with running(create_app(ServeSettings(model_dir=tiny_model[0], token=TOKEN))) as url, \
            httpx.Client(base_url=url, timeout=30) as client:
        wait_ready(client)
        for body in (json.dumps({"rows": [{"text": QUESTION}]}).encode(), b"{not json", b'{"rows": []}'):
            lane = client.post("/predict", content=body, headers=LANE)
            plain = client.post("/predict", content=body, headers=FASTAPI)
            assert (lane.status_code, lane.json()) == (plain.status_code, plain.json())
        good = client.post("/predict", json={"rows": [{"text": QUESTION}]}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert good.status_code == 200
        metrics = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    assert 'mmfuse_requests_total{endpoint="/predict",status="200"} 1.0' in metrics  # the route's own label
    assert 'mmfuse_requests_total{endpoint="/predict",status="401"} 4.0' in metrics
    assert 'endpoint="unmatched"' not in metrics


# ----- the OpenAPI document says what is refused ------------------------------------------------------

def test_openapi_documents_every_refusal(server):
    schema = server.get("/openapi.json").json()
    predict = schema["paths"]["/predict"]["post"]
    assert set(predict["responses"]) == {"200", "408", "413", "415", "422", "503", "504"}  # no token: no 401
    assert predict["responses"]["413"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    components = schema["components"]["schemas"]
    assert components["PredictRequest"]["properties"]["rows"] == {**components["PredictRequest"]["properties"]["rows"],
                                                                 "minItems": 1, "maxItems": 8}
    row = components["RowIn"]
    assert row["properties"]["audio"]["type"] == "null"  # the model takes image + text only
    assert row["anyOf"] == [{"required": ["image"], "properties": {"image": {"type": "string"}}},
                            {"required": ["text"], "properties": {"text": {"type": "string"}}}]
    text = row["properties"]["text"]["anyOf"][0]
    assert text["maxLength"] == 500 and text["pattern"].startswith("[^")
    assert row["properties"]["image"]["anyOf"][0]["format"] == "image-base64"
    upload = schema["paths"]["/predict/upload"]["post"]
    assert "400" in upload["responses"] and upload["requestBody"]["required"] is True
    form = upload["requestBody"]["content"]["multipart/form-data"]
    assert "image/png" in form["encoding"]["image"]["contentType"]
    body = components[form["schema"]["$ref"].rsplit("/", 1)[-1]]
    assert body["properties"]["image"]["format"] == "binary" and "audio" not in body["properties"]


def test_what_the_schema_says_is_what_the_server_does(server):
    # An image part sent as a plain string is a 422 naming it (the schema says: a file).
    refused(server.post("/predict/upload", files={"image": (None, "not a file")}), 422, "image")
    # Blank and NUL-only texts are refused; JSON's 5.0 is the integer 5; a text over the cap counts as sent.
    refused(server.post("/predict", json={"rows": [{"text": "\x00 \u3000"}]}), 422, "rows[0].text", "empty text")
    assert server.post("/predict", json={"rows": [{"text": QUESTION}], "top_k": 2.0}).status_code == 200
    refused(server.post("/predict", json={"rows": [{"text": QUESTION}], "top_k": 2.5}), 422, "top_k")
    refused(server.post("/predict", json={"rows": [{"text": "a" + " " * 500}]}), 422, "rows[0].text", "too long")
    assert server.post("/predict", json={"rows": [{"text": QUESTION, "audio": None}]}).status_code == 200
    refused(server.post("/predict", json={"rows": [{"text": QUESTION, "audio": ""}]}), 422, "rows[0].audio")


# ----- property-based: schemathesis against the live OpenAPI schema ---------------------------------

def test_schemathesis_finds_no_server_errors(tiny_model, tmp_path):
    """Every check schemathesis has (`--checks all`): no 5xx, every status and body documented,
    every request the schema forbids refused and every one it allows answered — the OpenAPI
    document says what the server really refuses. Real files for the file inputs come from
    tests/schemathesis_hooks.py."""
    cli = shutil.which("schemathesis", path=os.path.dirname(sys.executable))
    assert cli, "schemathesis is a declared dependency"
    hooks = os.path.join(os.path.dirname(__file__), "schemathesis_hooks.py")
    with running(create_app(ServeSettings(model_dir=tiny_model[0], token=TOKEN))) as url, \
            httpx.Client(base_url=url, timeout=30) as client:
        wait_ready(client)
        result = subprocess.run(
            [cli, "run", f"{url}/openapi.json", "--checks", "all", "--max-examples", "25", "--seed", "1",
             "--header", f"Authorization: Bearer {TOKEN}", "--request-timeout", "20", "--workers", "2",
             "--phases", "examples,coverage,fuzzing", "--continue-on-failure"],
            capture_output=True, text=True, timeout=240, cwd=tmp_path,
            env={**os.environ, "SCHEMATHESIS_HOOKS": hooks})
        metrics = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout, result.stdout[-3000:]
    assert 'status="500"' not in metrics
    assert 'mmfuse_requests_total{endpoint="/predict",status="200"}' in metrics  # it sent good input
    assert 'mmfuse_requests_total{endpoint="/predict/upload",status="200"}' in metrics
    assert 'mmfuse_requests_total{endpoint="/predict",status="422"}' in metrics  # it did send bad input
