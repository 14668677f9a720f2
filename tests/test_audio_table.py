"""A table whose audio cells are bad in every way we know is checked row by row: each bad cell is a
bad row with its reason, the rest trains, `--strict` fails naming them; `mmfuse predict --audio`."""
from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
import soundfile
from typer.testing import CliRunner

from conftest import tiny_config
from test_cli import run_main
from mmfuse import Predictor
from mmfuse.cli import app
from mmfuse.errors import DataError
from mmfuse.modalities import MODALITIES

RATE = 16_000


def bad_audio_files(folder) -> dict[str, tuple[str, str]]:
    """name -> (path, the reason's start) for every kind of bad audio cell."""
    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "good.wav"
    soundfile.write(good, np.sin(np.arange(RATE) / 10).astype(np.float32) * 0.3, RATE)
    truncated = folder / "truncated.wav"
    truncated.write_bytes(good.read_bytes()[:RATE])  # the header promises more samples than follow
    html = folder / "page.wav"
    html.write_text("<!doctype html><html><body>404 not found</body></html>")
    long = folder / "two_hours.flac"
    soundfile.write(long, np.zeros(2 * 3600 * 1000, np.float32), 1000)  # compresses to a few KB
    empty = folder / "empty.wav"
    soundfile.write(empty, np.zeros(0, np.float32), RATE)
    nan = folder / "nan.wav"
    soundfile.write(nan, np.full(RATE // 2, np.nan, np.float32), RATE, subtype="FLOAT")
    return {"missing": (str(folder / "missing.wav"), "file not found"),
            "truncated": (str(truncated), "truncated or corrupt audio"),
            "html": (str(html), "not audio (looks like HTML)"),
            "two hours": (str(long), "audio too long: 7200.0 s"),
            "zero samples": (str(empty), "empty audio"),
            "nan": (str(nan), "audio has NaN or infinite samples")}


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audio-table")
    bad = bad_audio_files(folder / "bad")
    rows = []
    for i in range(18):
        rows.append({"image": str(MODALITIES["image"].example_file(folder, i)),
                     "audio": str(MODALITIES["audio"].example_file(folder, i)), "label": "ab"[i % 2]})
    for path, _ in bad.values():
        rows.append({"image": str(MODALITIES["image"].example_file(folder, 0)), "audio": path, "label": "a"})
    rows.append({"image": None, "audio": None, "label": "b"})  # no input at all: bad too
    path = folder / "table.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return folder, path, bad


def config(folder, path, **overrides):
    return tiny_config(folder, path, **{"data.columns": {"image": "image", "audio": "audio", "text": None,
                                                         "label": "label"},
                                        "encoders": {"image": {"name": "tiny_image", "image_size": 16},
                                                     "audio": {"name": "tiny_audio"}},
                                        "data.test_fraction": 0.0, **overrides})


def test_bad_audio_rows_are_reported_and_the_rest_trains(table):
    folder, path, bad = table
    predictor = Predictor(config(folder, path)).fit()
    reasons = {b.row: b for b in predictor.bad_rows}
    assert len(reasons) == len(bad) + 1
    for row, (_, expected) in zip(range(19, 19 + len(bad)), bad.values()):
        assert reasons[row].field == "audio" and reasons[row].reason.startswith(expected), reasons[row]
        assert "audio column 'audio'" in str(reasons[row])
    assert reasons[19 + len(bad)].reason == "no image and no audio"
    assert predictor.fit_summary["epochs"] >= 1  # the 18 good rows trained


def test_strict_fails_naming_every_bad_row(table):
    folder, path, bad = table
    with pytest.raises(DataError) as error:
        Predictor(config(folder, path, **{"data.strict": True})).fit()
    message = str(error.value)
    assert f"{len(bad) + 1} bad row(s)" in message
    for _, expected in bad.values():
        assert expected in message


def test_predict_with_audio_on_the_command_line(table, tmp_path, monkeypatch, capsys):
    folder, path, bad = table
    predictor = Predictor(config(folder, path, output_dir=str(tmp_path / "run"))).fit()
    predictor.save(tmp_path / "model")
    clip = str(MODALITIES["audio"].example_file(tmp_path, 3))
    image = str(MODALITIES["image"].example_file(tmp_path, 3))
    runner = CliRunner()
    result = runner.invoke(app, ["predict", str(tmp_path / "model"), "--image", image, "--audio", clip])
    assert result.exit_code == 0, result.output
    expected = predictor.predict([{"image": image, "audio": clip}])["prediction"][0]
    assert f"prediction: {expected}" in result.output
    code, out = run_main(monkeypatch, capsys, "predict", str(tmp_path / "model"), "--audio", bad["html"][0])
    assert code == 2 and "not audio (looks like HTML)" in out.err
    code, out = run_main(monkeypatch, capsys, "predict", str(tmp_path / "model"), "--text", "hello")
    assert code == 2 and "this model takes no text" in out.err
