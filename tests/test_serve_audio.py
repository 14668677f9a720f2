"""`mmfuse serve` over every registered modality (image + text + audio), over real HTTP.

The model takes each modality in `MODALITIES` with its tiny random encoder (`tiny_<name>`) and
its `example_file` inputs, so a newly registered modality is served and tested here as well.
"""
from __future__ import annotations

import base64
import io
import struct
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

import mmfuse.encoders.audio  # noqa: F401  (registers tiny_audio)
from conftest import tiny_config
from mmfuse import Predictor
from mmfuse.modalities import MODALITIES
from mmfuse.serve import ServeSettings, create_app
from mmfuse.serve.local import running
from test_serve import wait_ready

LABELS = ["low", "mid", "high"]
N_ROWS = 24


def build_all_modalities_model(folder: Path) -> tuple[Path, list[dict]]:
    """A tiny model over every registered modality; returns (model dir, the table's rows with
    absolute paths, keyed by modality name)."""
    inputs = folder / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(N_ROWS):
        row = {name: str(modality.example_file(inputs, i)) for name, modality in MODALITIES.items()}
        rows.append({**row, "label": LABELS[i % 3]})
    pd.DataFrame(rows).to_csv(folder / "table.csv", index=False)
    overrides = {"data.columns": {**{name: name for name in MODALITIES}, "label": "label"},
                 "encoders": {name: {"name": f"tiny_{name}"} for name in MODALITIES}}
    config = tiny_config(folder, folder / "table.csv", **overrides)
    config["encoders"]["image"]["image_size"] = 16
    Predictor(config).fit().save(folder / "model")
    return folder / "model", [{k: v for k, v in row.items() if k != "label"} for row in rows]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[Path, list[dict]]:
    return build_all_modalities_model(tmp_path_factory.mktemp("all-modalities"))


@pytest.fixture(scope="module")
def predictor(model) -> Predictor:
    return Predictor.load(model[0])


@pytest.fixture(scope="module")
def app(model):
    return create_app(ServeSettings(model_dir=model[0], max_wait_ms=2))


@pytest.fixture(scope="module")
def server(app):
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        wait_ready(client)
        yield client


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def json_value(name: str, value: str) -> str:
    """A table value as the JSON API takes it: a file's bytes base64, a text as is."""
    return b64(Path(value).read_bytes()) if MODALITIES[name].is_file else value


def multipart(row: dict) -> tuple[dict, dict]:
    files = {n: (Path(v).name, Path(v).read_bytes()) for n, v in row.items() if MODALITIES[n].is_file}
    return files, {n: v for n, v in row.items() if not MODALITIES[n].is_file}


def refused(response: httpx.Response, status: int, field: str, says: str = "") -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["field"] == field and says.lower() in body["message"].lower(), body
    return body


# ----- bad audio ----------------------------------------------------------------------------------

def wav_bytes(seconds: float = 0.5, rate: int = 16_000) -> bytes:
    import soundfile

    buffer = io.BytesIO()
    t = np.arange(int(seconds * rate)) / rate
    soundfile.write(buffer, (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), rate, format="WAV",
                    subtype="PCM_16")
    return buffer.getvalue()


def two_hour_wav_header(rate: int = 16_000) -> bytes:
    """A WAV whose header promises two hours of 16-bit samples; 3 kB of them are there."""
    size = 2 * 3600 * rate * 2
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return (b"RIFF" + struct.pack("<I", 36 + size) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
            + b"data" + struct.pack("<I", size) + b"\x00" * 3200)


def two_hour_flac_header(rate: int = 16_000) -> bytes:
    """A 0.1 s FLAC whose STREAMINFO says two hours (the 36-bit total-samples field)."""
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(rate // 10, np.float32), rate, format="FLAC")
    data = bytearray(buffer.getvalue())
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # STREAMINFO comes first
    fields = int.from_bytes(data[18:26], "big")  # rate 20 | channels 3 | bits 5 | total samples 36
    data[18:26] = ((fields & ~((1 << 36) - 1)) | 2 * 3600 * rate).to_bytes(8, "big")
    return bytes(data)


BAD_AUDIO = [
    pytest.param(b"<!doctype html><html><body>Sign in to continue</body></html>", "looks like HTML", id="html"),
    pytest.param(wav_bytes()[:5000], "truncated", id="truncated"),
    pytest.param(two_hour_wav_header(), "header promises 115,200,000 samples", id="two-hour-wav"),
    pytest.param(two_hour_flac_header(), "too long: 7200.0 s", id="two-hour-flac"),
    pytest.param(b"", "empty", id="empty"),
    pytest.param(b"\x00\x01\x02garbage" * 10, "not audio", id="garbage"),
]


@pytest.mark.parametrize("data, says", BAD_AUDIO)
def test_bad_audio_is_422_naming_the_field(server, data, says):
    refused(server.post("/predict", json={"rows": [{"text": "hello"}, {"audio": b64(data)}]}),
            422, "rows[1].audio", says)
    refused(server.post("/predict/upload", files={"audio": ("clip.wav", data, "audio/wav")},
                        data={"text": "hello"}), 422, "audio", says)


def test_audio_over_the_servers_cap_is_refused(model):
    clip = Path(model[1][0]["audio"]).read_bytes()  # 0.5 s
    with running(create_app(ServeSettings(model_dir=model[0], max_audio_seconds=0.25))) as url, \
            httpx.Client(base_url=url, timeout=30) as client:
        wait_ready(client)
        refused(client.post("/predict", json={"rows": [{"audio": b64(clip)}]}), 422, "rows[0].audio",
                "audio too long: 0.5 s")
        refused(client.post("/predict/upload", files={"audio": ("a.wav", clip)}), 422, "audio", "too long")
        assert client.get("/info").json()["inputs"]["audio"]["limits"] == {"max_audio_seconds": 0.25}


# ----- good audio --------------------------------------------------------------------------------

def test_audio_as_base64_and_as_a_file_give_the_predictors_answer(server, predictor, model):
    row = model[1][5]
    audio = Path(row["audio"])
    by_json = server.post("/predict", json={"rows": [{"audio": b64(audio.read_bytes())}], "top_k": 3})
    by_file = server.post("/predict/upload", files={"audio": ("speech.wav", audio.read_bytes(), "audio/wav")},
                          data={"top_k": "3"})
    assert by_json.status_code == 200, by_json.text
    assert by_file.status_code == 200, by_file.text
    got_json, got_file = by_json.json()["predictions"][0], by_file.json()["predictions"][0]
    assert got_json == got_file
    want = predictor.predict([{"audio": str(audio)}], top_k=3).iloc[0]
    assert got_json["prediction"] == want["prediction"]
    assert got_json["top"][0]["score"] == pytest.approx(want["top1_score"], abs=1e-5)
    data_url = server.post("/predict", json={"rows": [{"audio": "data:audio/wav;base64," + b64(audio.read_bytes())}],
                                             "top_k": 3})
    assert data_url.json()["predictions"][0] == got_json


def test_all_inputs_together_and_their_contributions(server, predictor, model):
    row = model[1][7]
    files, fields = multipart(row)
    response = server.post("/predict/upload", files=files, data={**fields, "explain": "true"})
    assert response.status_code == 200, response.text
    prediction = response.json()["predictions"][0]
    contribution = prediction["contribution"]
    assert contribution["label"] == prediction["prediction"]
    assert set(contribution["without"]) == set(MODALITIES)
    label = predictor.labels.index(contribution["label"])
    table = [{n: v for n, v in row.items() if n != left_out} for left_out in MODALITIES]
    _, without = predictor.predict_scores(table)
    for i, name in enumerate(MODALITIES):
        assert contribution["without"][name] == pytest.approx(float(without[i, label]), abs=1e-5)
    _, full = predictor.predict_scores([row])
    assert contribution["score"] == pytest.approx(float(full[0, label]), abs=1e-5)
    by_json = server.post("/predict", json={"rows": [{n: json_value(n, v) for n, v in row.items()}],
                                            "explain": True}).json()["predictions"][0]
    assert by_json["contribution"]["without"] == pytest.approx(contribution["without"], abs=1e-6)


def test_info_lists_each_input(server):
    info = server.get("/info").json()
    assert info["modalities"] == list(MODALITIES)
    audio = info["inputs"]["audio"]
    assert audio["kind"] == "file" and {"WAV", "FLAC", "OGG"} <= set(audio["formats"])
    assert audio["limits"] == {"max_audio_seconds": 30}
    assert info["limits"] == {"max_pixels": 25_000_000, "max_text_chars": 2_000, "max_audio_seconds": 30}


# ----- every registered modality -------------------------------------------------------------------

@pytest.mark.parametrize("name", list(MODALITIES))
def test_each_modality_alone_is_accepted_and_garbage_refused(server, model, name):
    value = model[1][3][name]
    response = server.post("/predict", json={"rows": [{name: json_value(name, value)}]})
    assert response.status_code == 200, response.text
    files, fields = multipart({name: value})
    assert server.post("/predict/upload", files=files or None, data=fields).json() == response.json()

    if MODALITIES[name].is_file:
        garbage = b"<html><body>not a file of this kind</body></html>"
        json_response = server.post("/predict", json={"rows": [{name: b64(garbage)}]})
        upload_response = server.post("/predict/upload", files={name: (f"x.{name}", garbage)})
    else:
        json_response = server.post("/predict", json={"rows": [{name: "   "}]})
        upload_response = server.post("/predict/upload", data={name: "\x00 "})
    for response, field in ((json_response, f"rows[0].{name}"), (upload_response, name)):
        assert 400 <= response.status_code < 500, response.text
        assert response.json()["field"] == field and response.json()["message"]
    bad_type = server.post("/predict", json={"rows": [{name: 5}]})
    refused(bad_type, 422, f"rows[0].{name}")
    refused(server.post("/predict", json={"rows": [{name: "not base64 !!" if MODALITIES[name].is_file else ""}]}),
            422, f"rows[0].{name}")


def test_a_row_with_nothing_names_the_first_input(server):
    refused(server.post("/predict", json={"rows": [{}]}), 422, f"rows[0].{next(iter(MODALITIES))}", "none of")


def test_no_upload_is_left_behind(server, app, model):
    row = model[1][2]
    files, fields = multipart(row)
    files["audio"] = ("clip.wav", wav_bytes()[:5000])  # the image is stored before the audio is refused
    refused(server.post("/predict/upload", files=files, data=fields), 422, "audio", "truncated")
    good = {n: json_value(n, v) for n, v in row.items()}
    refused(server.post("/predict", json={"rows": [good, {**good, "audio": b64(b"")}]}), 422, "rows[1].audio", "empty")
    assert server.post("/predict", json={"rows": [good], "explain": True}).status_code == 200
    assert list(app.state.tmp.iterdir()) == []
