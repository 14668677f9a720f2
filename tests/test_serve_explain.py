"""`explain=true` on a real server: each prediction carries the heatmap, the word attributions and
the Shapley values of mmfuse.explain, computed in the model thread, for a bounded number of rows."""
from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest

from conftest import tiny_config
from mmfuse import Predictor
from mmfuse.explain import explain_row
from mmfuse.serve import ServeSettings, create_app
from mmfuse.serve import explanations
from mmfuse.serve.local import running
from test_serve import QUESTION, b64, build_tiny_model, wait_ready

CAP = 2  # max_explain_rows of the servers here


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("serve-explain"))


@pytest.fixture(scope="module")
def predictor(tiny_model) -> Predictor:
    return Predictor.load(tiny_model[0])


def serving(model_dir, **settings):
    app = create_app(ServeSettings(model_dir=model_dir, max_explain_rows=CAP, **settings))
    return running(app)


@pytest.fixture(scope="module")
def server(tiny_model):
    with serving(tiny_model[0]) as url, httpx.Client(base_url=url, timeout=60) as client:
        wait_ready(client)
        yield client


def test_explain_returns_the_heatmap_words_and_shapley_values(server, predictor, tiny_model):
    image = tiny_model[1][0]
    response = server.post("/predict/upload", files={"image": image.read_bytes()},
                           data={"text": QUESTION, "explain": "true"})
    assert response.status_code == 200, response.text
    prediction = response.json()["predictions"][0]
    explanation = prediction["explanation"]
    assert prediction["contribution"] is not None  # still there
    assert explanation["label"] == prediction["prediction"]
    assert explanation["probability"] == pytest.approx(prediction["top"][0]["score"], abs=1e-5)
    grid = np.asarray(explanation["heatmaps"]["image"])
    assert grid.ndim == 2 and grid.shape[0] == grid.shape[1] > 1
    assert grid.min() >= 0 and grid.max() <= 1 and grid.max() > 0
    assert [w["word"] for w in explanation["words"]["text"]] == QUESTION.split()
    assert all(isinstance(w["attribution"], float) for w in explanation["words"]["text"])
    assert set(explanation["shapley"]) == {"image", "text"}
    # What mmfuse.explain says of the same row, read from the file.
    direct = explain_row(predictor, {"image": str(image), "text": QUESTION})
    assert grid == pytest.approx(np.asarray(direct.heatmaps["image"]), abs=1e-3)
    assert explanation["shapley"] == pytest.approx(direct.shapley, abs=1e-4)
    assert explanation["word_method"] == direct.word_method == {"text": "counterfactual"}
    assert explanation["edits"] == direct.edits and len(direct.edits["text"]) == len(QUESTION.split())


def test_each_row_explains_the_inputs_it_has(server, tiny_model):
    rows = [{"image": b64(tiny_model[1][1])}, {"text": "is the square red?"}]
    response = server.post("/predict", json={"rows": rows, "explain": True})
    assert response.status_code == 200, response.text
    image_only, text_only = (p["explanation"] for p in response.json()["predictions"])
    assert set(image_only["heatmaps"]) == {"image"} and image_only["words"] == {}
    assert set(image_only["shapley"]) == {"image"}
    assert text_only["heatmaps"] == {} and [w["word"] for w in text_only["words"]["text"]] == ["is", "the", "square", "red?"]


def test_without_explain_there_is_no_explanation(server, tiny_model):
    rows = [{"image": b64(tiny_model[1][0]), "text": QUESTION}]
    for body in ({"rows": rows}, {"rows": rows, "explain": False}):
        prediction = server.post("/predict", json=body).json()["predictions"][0]
        assert prediction["explanation"] is None and prediction["contribution"] is None
    upload = server.post("/predict/upload", files={"image": tiny_model[1][0].read_bytes()}, data={"text": QUESTION})
    assert upload.json()["predictions"][0]["explanation"] is None


def test_the_rows_one_request_may_explain_are_capped(server):
    rows = [{"text": QUESTION}] * (CAP + 1)
    response = server.post("/predict", json={"rows": rows, "explain": True})
    assert response.status_code == 422
    body = response.json()
    assert body["field"] == "rows" and f"at most {CAP} rows" in body["message"]
    assert "max_explain_rows" in body["message"] and f"not {CAP + 1}" in body["message"]
    assert server.post("/predict", json={"rows": rows}).status_code == 200  # without explain: fine
    info = server.get("/info").json()
    assert info["explain"] is True and info["max_explain_rows"] == CAP
    schema = server.get("/openapi.json").json()["components"]["schemas"]["PredictRequest"]
    assert {"properties": {"rows": {"maxItems": CAP}}} in schema["anyOf"]


def test_masked_words_only_under_mask_pii(tiny_model):
    text = "is the square red? mail jane.doe@example.com"
    with serving(tiny_model[0], mask_pii=True) as url, httpx.Client(base_url=url, timeout=60) as client:
        wait_ready(client)
        response = client.post("/predict/upload", files={"image": tiny_model[1][0].read_bytes()},
                               data={"text": text, "explain": "true"})
    assert response.status_code == 200, response.text
    words = [w["word"] for w in response.json()["predictions"][0]["explanation"]["words"]["text"]]
    assert words == ["is", "the", "square", "red?", "mail", "[EMAIL]"]
    assert b"jane.doe" not in response.content and b"example.com" not in response.content


def test_explaining_runs_in_the_model_thread_within_the_deadline(tiny_model, monkeypatch):
    threads: list[str] = []

    def slow(predictor, row):
        threads.append(threading.current_thread().name)
        time.sleep(0.8)  # past the deadline
        return explain_row(predictor, row)

    monkeypatch.setattr(explanations, "explain_row", slow)
    with serving(tiny_model[0], timeout_s=0.5) as url, httpx.Client(base_url=url, timeout=60) as client:
        wait_ready(client)
        response = client.post("/predict", json={"rows": [{"text": QUESTION}] * CAP, "explain": True})
        time.sleep(1.0)  # the model thread is done with that request
    assert response.status_code == 504
    assert threads and all(name.startswith("mmfuse-model") for name in threads)
    assert len(threads) < CAP  # the row after the deadline is not explained


def test_a_failing_explanation_leaves_the_prediction(tiny_model, monkeypatch):
    def broken(predictor, row):
        raise RuntimeError("no gradients today")

    monkeypatch.setattr(explanations, "explain_row", broken)
    with serving(tiny_model[0]) as url, httpx.Client(base_url=url, timeout=60) as client:
        wait_ready(client)
        response = client.post("/predict", json={"rows": [{"text": QUESTION}], "explain": True})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["explanation"] is None


def test_a_regression_model_is_not_explained(tiny_model, tmp_path):
    import pandas as pd

    table = pd.read_csv(tiny_model[0].parent / "table.csv")
    table["answer"] = (table["answer"] == "yes").astype(float)
    table.to_csv(tmp_path / "table.csv", index=False)
    (tmp_path / "images").symlink_to(tiny_model[0].parent / "images")
    Predictor(tiny_config(tmp_path, tmp_path / "table.csv", task="regression", **{"train.epochs": 1})).fit() \
        .save(tmp_path / "model")
    with serving(tmp_path / "model") as url, httpx.Client(base_url=url, timeout=60) as client:
        wait_ready(client)
        response = client.post("/predict", json={"rows": [{"text": QUESTION}], "explain": True})
        info = client.get("/info").json()
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["explanation"] is None
    assert info["explain"] is False
