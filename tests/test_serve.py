"""`mmfuse serve` on a tiny trained model, over real HTTP (uvicorn on a loopback port)."""
from __future__ import annotations

import base64
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch

from conftest import tiny_config, write_shapes_csv
from mmfuse import Predictor
from mmfuse.errors import ConfigError
from mmfuse.serve import ServeSettings, create_app
from mmfuse.serve.local import running
from mmfuse.serve.privacy import log_preview, mask_pii
from mmfuse.serve.security import check_bind, load_token, token_matches

QUESTION = "what color is the square?"


def build_tiny_model(folder: Path) -> tuple[Path, list[Path]]:
    """Train and save a tiny random-encoder model; returns (model dir, its image files)."""
    write_shapes_csv(folder)
    Predictor(tiny_config(folder, folder / "table.csv")).fit().save(folder / "model")
    return folder / "model", sorted((folder / "images").glob("*.png"))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> tuple[Path, list[Path]]:
    return build_tiny_model(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def predictor(tiny_model) -> Predictor:
    return Predictor.load(tiny_model[0])


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def wait_ready(client: httpx.Client, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while client.get("/health/ready").status_code != 200:
        assert time.monotonic() < deadline, "the model never became ready"
        time.sleep(0.05)


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


@pytest.fixture(scope="module")
def server(tiny_model):
    settings = ServeSettings(model_dir=tiny_model[0], max_wait_ms=2)
    with running(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        wait_ready(client)
        yield client


def test_predict_json_matches_the_predictor(server, predictor, tiny_model):
    image = tiny_model[1][0]
    rows = [{"image": b64(image), "text": QUESTION}, {"image": b64(image)}, {"text": "is the square red?"}]
    response = server.post("/predict", json={"rows": rows, "top_k": 2})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    expected = predictor.predict([{"image": str(image), "question": QUESTION}, {"image": str(image)},
                                  {"question": "is the square red?"}], top_k=2)
    assert [p["prediction"] for p in predictions] == expected["prediction"].tolist()
    for got, (_, want) in zip(predictions, expected.iterrows()):
        assert [t["label"] for t in got["top"]] == [want["top1"], want["top2"]]
        assert got["top"][0]["score"] == pytest.approx(want["top1_score"], abs=1e-5)
        assert got["contribution"] is None  # not asked for


def test_upload_with_explain_gives_each_modality_contribution(server, predictor, tiny_model):
    image = tiny_model[1][1]
    response = server.post("/predict/upload", files={"image": ("x.png", image.read_bytes(), "image/png")},
                           data={"text": QUESTION, "explain": "true", "top_k": "3"})
    assert response.status_code == 200, response.text
    prediction = response.json()["predictions"][0]
    assert prediction["prediction"] in predictor.labels and len(prediction["top"]) == 3
    contribution = prediction["contribution"]
    label = predictor.labels.index(contribution["label"])
    _, alone = predictor.predict_scores([{"image": str(image)}, {"question": QUESTION}])
    assert contribution["label"] == prediction["prediction"]
    assert contribution["score"] == pytest.approx(prediction["top"][0]["score"], abs=1e-6)
    assert set(contribution["without"]) == {"image", "text"}
    assert contribution["without"]["text"] == pytest.approx(float(alone[0, label]), abs=1e-5)
    assert contribution["without"]["image"] == pytest.approx(float(alone[1, label]), abs=1e-5)
    # A row with one input has nothing to take away.
    single = server.post("/predict", json={"rows": [{"text": QUESTION}], "explain": True}).json()
    assert single["predictions"][0]["contribution"] is None


def test_a_model_without_audio_refuses_an_audio_input(server, tmp_path):
    from mmfuse.modalities import MODALITIES

    clip = Path(MODALITIES["audio"].example_file(tmp_path, 0)).read_bytes()
    response = server.post("/predict", json={"rows": [{"text": QUESTION, "audio": base64.b64encode(clip).decode()}]})
    assert response.status_code == 422 and response.json()["field"] == "rows[0].audio"
    assert "takes no audio" in response.json()["message"]
    response = server.post("/predict/upload", files={"audio": ("a.wav", clip, "audio/wav")}, data={"text": QUESTION})
    assert response.status_code == 422 and response.json()["field"] == "audio"
    assert "takes no audio" in response.json()["message"]


def test_embed_is_the_heads_input(server, predictor, tiny_model):
    rows = [{"image": b64(tiny_model[1][2]), "text": QUESTION}, {"text": "is the square blue?"}]
    embedded = server.post("/embed", json={"rows": rows}).json()
    assert embedded["dim"] == predictor.model.fusion.out_dim
    vectors = torch.tensor(embedded["embeddings"])
    with torch.no_grad():
        from_vectors = predictor.model.head.scores(predictor.model.head(vectors))
    predicted = server.post("/predict", json={"rows": rows, "top_k": 1}).json()["predictions"]
    for scores, prediction in zip(from_vectors, predicted):
        assert predictor.labels[int(scores.argmax())] == prediction["prediction"]
        assert float(scores.max()) == pytest.approx(prediction["top"][0]["score"], abs=1e-5)


def test_info_metrics_docs_and_page(server, predictor):
    info = server.get("/info").json()
    assert info["labels"] == predictor.labels and info["modalities"] == ["image", "text"]
    assert set(info["inputs"]) == {"image", "text"}  # only what the model takes
    assert info["inputs"]["image"]["kind"] == "file" and "PNG" in info["inputs"]["image"]["formats"]
    assert info["inputs"]["image"]["limits"] == {"max_pixels": 25_000_000}
    assert info["inputs"]["text"] == {"kind": "text", "help": info["inputs"]["text"]["help"], "formats": [],
                                      "limits": {"max_text_chars": 2_000}}
    assert info["limits"]["max_audio_seconds"] == 30  # the server's caps, every modality
    assert info["search"] is False and info["auth"] is False
    assert server.get("/health/live").json()["status"] == "live"
    schema = server.get("/openapi.json").json()
    assert {"/predict", "/predict/upload", "/embed", "/health/ready", "/metrics"} <= set(schema["paths"])
    assert "swagger" in server.get("/docs").text.lower()
    page = server.get("/")
    assert page.status_code == 200 and 'id="ask"' in page.text
    assert server.get("/static/app.js").status_code == 200
    text = server.get("/metrics").text
    assert metric(text, 'mmfuse_requests_total{endpoint="/info",status="200"}') >= 1
    assert metric(text, "mmfuse_model_ready") == 1.0
    assert metric(text, "mmfuse_queue_depth") == 0.0
    assert "mmfuse_request_seconds_bucket" in text and "mmfuse_batch_rows_bucket" in text


def test_concurrent_requests_share_forward_passes(tiny_model, predictor):
    """Micro-batching: 24 concurrent single-row requests -> fewer forward passes, same answers."""
    images = tiny_model[1][:8]
    questions = [QUESTION, "is the square red?", "is the square green?"]
    rows = [(images[i % 8], questions[i % 3]) for i in range(24)]
    settings = ServeSettings(model_dir=tiny_model[0], max_batch=32, max_wait_ms=150)
    with running(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        wait_ready(client)

        def ask(row):
            body = {"rows": [{"image": b64(row[0]), "text": row[1]}], "top_k": 5}
            return client.post("/predict", json=body)

        with ThreadPoolExecutor(len(rows)) as pool:
            responses = list(pool.map(ask, rows))
        text = client.get("/metrics").text
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    passes, batched_rows = metric(text, "mmfuse_batch_rows_count"), metric(text, "mmfuse_batch_rows_sum")
    assert batched_rows == len(rows)
    assert passes < len(rows) / 2, f"{passes} forward passes for {len(rows)} concurrent requests"
    for (image, question), response in zip(rows, responses):
        _, alone = predictor.predict_scores([{"image": str(image), "question": question}])
        served = {t["label"]: t["score"] for t in response.json()["predictions"][0]["top"]}
        for label, score in served.items():
            assert score == pytest.approx(float(alone[0, predictor.labels.index(label)]), abs=1e-5)


def test_no_batching_runs_one_request_per_pass(tiny_model):
    settings = ServeSettings(model_dir=tiny_model[0], batching=False, max_wait_ms=150)
    with running(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        wait_ready(client)
        body = {"rows": [{"text": QUESTION}]}
        with ThreadPoolExecutor(8) as pool:
            statuses = [r.status_code for r in pool.map(lambda _: client.post("/predict", json=body), range(8))]
        text = client.get("/metrics").text
    assert statuses == [200] * 8
    assert metric(text, "mmfuse_batch_rows_count") == 8


def test_not_ready_while_loading_then_ready(tiny_model):
    release = threading.Event()

    def slow_load():
        release.wait(30)
        return Predictor.load(tiny_model[0])

    with running(create_app(ServeSettings(model_dir=tiny_model[0]), load=slow_load)) as url, \
            httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/health/live").status_code == 200
        ready = client.get("/health/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "loading"
        refused = client.post("/predict", json={"rows": [{"text": QUESTION}]})
        assert refused.status_code == 503 and refused.headers["retry-after"]
        assert refused.json()["error"] == "not_ready"
        release.set()
        wait_ready(client)
        assert client.post("/predict", json={"rows": [{"text": QUESTION}]}).status_code == 200


def test_a_model_that_fails_to_load_is_reported(tmp_path):
    with running(create_app(ServeSettings(model_dir=tmp_path / "nothing"))) as url, \
            httpx.Client(base_url=url, timeout=30) as client:
        deadline = time.monotonic() + 30
        while (body := client.get("/health/ready").json())["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert body["status"] == "failed" and "nothing" in body["detail"]
        response = client.post("/predict", json={"rows": [{"text": QUESTION}]})
        assert response.status_code == 503 and "failed to load" in response.json()["message"]


def test_binding_beyond_loopback_needs_a_token(tmp_path, monkeypatch):
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("localhost", None)
    with pytest.raises(ConfigError, match="--host 0.0.0.0"):
        check_bind("0.0.0.0", None)
    with pytest.raises(ConfigError, match="10.1.2.3"):
        check_bind("10.1.2.3", None)
    check_bind("0.0.0.0", "a-long-enough-token-1234")
    monkeypatch.setenv("MMFUSE_TOKEN", "from-the-environment-123")
    assert load_token(None) == "from-the-environment-123"
    (tmp_path / "token").write_text("from-a-file-0123456789\n")
    assert load_token(tmp_path / "token") == "from-a-file-0123456789"
    (tmp_path / "short").write_text("short")
    with pytest.raises(ConfigError, match="at least 16"):
        load_token(tmp_path / "short")
    with pytest.raises(ConfigError, match="missing"):
        load_token(tmp_path / "missing")
    monkeypatch.delenv("MMFUSE_TOKEN")
    assert load_token(None) is None


def test_token_comparison():
    token = "s3cret-token-0123456789"
    assert token_matches(f"Bearer {token}", token) and token_matches(f"bearer {token}", token)
    assert not token_matches(None, token) and not token_matches(token, token)
    assert not token_matches(f"Bearer {token}x", token) and not token_matches(f"Basic {token}", token)


def test_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="--max-batch"):
        ServeSettings(model_dir=tmp_path, max_batch=1000).check()
    with pytest.raises(ConfigError, match="--max-queue"):
        ServeSettings(model_dir=tmp_path, max_queue=0).check()


def test_pii_is_masked_in_log_previews():
    text = "mail jane.doe@example.com or call +44 20 7946 0958, card 4111 1111 1111 1111, ssn 123-45-6789"
    masked = mask_pii(text)
    for secret in ("jane.doe", "7946", "4111", "123-45"):
        assert secret not in masked
    assert masked.count("[EMAIL]") == 1 and masked.count("[PHONE]") == 1
    assert masked.count("[CARD]") == 1 and masked.count("[US_SSN]") == 1
    assert mask_pii(QUESTION) == QUESTION
    assert "example.com" in log_preview(text, mask=False) and "example.com" not in log_preview(text, mask=True)


def build_tiny_index(folder: Path, images: list[Path]) -> Path:
    """An untrained aligned model over the tiny encoders, and a flat index of `images`."""
    import pandas as pd

    from mmfuse.align.model import AlignedModel, build_align_encoders
    from mmfuse.config import parse_config
    from mmfuse.index import VectorIndex

    config = tiny_config(folder, "unused.csv", **{"encoders.image.trainable": False,
                                                   "encoders.text.trainable": False, "align": {}})
    config = parse_config(config)
    aligned = AlignedModel(config, build_align_encoders(config))
    aligned.save(folder / "aligned")
    index = VectorIndex.create(aligned.dim, kind="flat")
    index.info["model"] = str(folder / "aligned")
    paths = [str(p) for p in images]
    index.add(aligned.embed_images(paths), pd.DataFrame({"image": paths, "caption": [p.stem for p in images]}))
    index.save(folder / "index")
    return folder / "index"


def test_search_by_text_and_by_image(tiny_model, tmp_path):
    pytest.importorskip("mmfuse.index")
    pytest.importorskip("mmfuse.align.model")
    from mmfuse.align.model import AlignedModel
    from mmfuse.index import VectorIndex

    images = tiny_model[1][:12]
    index_dir = build_tiny_index(tmp_path, images)
    settings = ServeSettings(model_dir=tiny_model[0], index_dir=index_dir)
    with running(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        wait_ready(client)
        deadline = time.monotonic() + 30
        while (by_text := client.post("/search", json={"text": "a red square", "k": 3})).status_code == 503:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        by_image = client.post("/search", json={"image": b64(images[5]), "k": 2})
        both = client.post("/search", json={"text": "x", "image": b64(images[5])})
        assert client.get("/info").json()["search"] is True
    assert by_text.status_code == 200, by_text.text
    index = VectorIndex.open(index_dir)
    expected = index.search(AlignedModel.load(tmp_path / "aligned").embed_texts(["a red square"]), 3)
    hits = by_text.json()["hits"]
    assert [h["id"] for h in hits] == expected.ids[0].tolist()
    assert hits[0]["image_url"].startswith("data:image/png;base64,")
    first = by_image.json()["hits"][0]  # an indexed image finds itself
    assert first["metadata"]["caption"] == images[5].stem and first["score"] == pytest.approx(1.0, abs=1e-4)
    assert both.status_code == 422 and both.json()["field"] == "text"
