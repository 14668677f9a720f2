"""mmfuse explain: a Grad-CAM heatmap over image regions, word attributions (Integrated Gradients,
occlusion) and exact modality Shapley values, from the Python API and the command line."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from conftest import tiny_config
from mmfuse import Predictor
from mmfuse.explain import _prior, explain_row, log_odds, row_logits, word_occlusion


@pytest.fixture(scope="module")
def film_model(tmp_path_factory):
    """The default model's shape (FiLM over CNN image tokens) on the tiny shapes table."""
    from conftest import write_shapes_csv

    folder = tmp_path_factory.mktemp("explain")
    table = write_shapes_csv(folder)
    config = tiny_config(folder, table, **{"fusion.name": "film", "fusion.options": {"pool": "sum"},
                                           "train.epochs": 6})
    predictor = Predictor(config).fit()
    predictor.save(folder / "model")
    row = {"image": str(next((folder / "images").glob("*.png"))), "text": "is the square red?"}
    return predictor, folder, row


def test_heatmap_words_and_shapley(film_model):
    predictor, _, row = film_model
    result = explain_row(predictor, row, words="integrated-gradients")
    grid = np.asarray(result.heatmaps["image"])
    # tiny_image at 16 px: its first block's 16x16 map (the deepest at least 16 regions wide)
    assert grid.shape == (16, 16) and grid.min() >= 0 and grid.max() == pytest.approx(1.0)
    assert [w for w, _ in result.words["text"]] == ["is", "the", "square", "red?"]
    # Integrated Gradients is complete: the words' attributions of the predicted class's log-odds add
    # up to its change from the baseline, every word the unknown token (4 out-of-vocabulary words).
    target = predictor.labels.index(result.prediction)
    odds = lambda text: float(log_odds(row_logits(predictor, [{**row, "text": text}]), target)[0])  # noqa: E731
    with_all = odds(row["text"])
    assert sum(a for _, a in result.words["text"]) == pytest.approx(with_all - odds("qqa qqb qqc qqd"), abs=0.02)
    # Occlusion: each word's value is the log-odds with the word minus without it, here for one word.
    without = odds("is the square")
    assert word_occlusion(predictor, row, "text", target)[3][1] == pytest.approx(float(with_all - without), abs=1e-5)
    # Shapley efficiency: the values add up to p(both present) - p(none present).
    prior = float(_prior(predictor)[target])
    assert sum(result.shapley.values()) == pytest.approx(result.probability - prior, abs=1e-5)


def test_counterfactual_words_are_each_words_most_decisive_edit(film_model):
    """The default for a model trained with its word substitutes: per word, the largest drop of the
    answer's log-odds over deleting it or replacing it by a word the training texts use in its place."""
    predictor, _, row = film_model
    result = explain_row(predictor, row)
    assert result.word_method == {"text": "counterfactual"}
    target = predictor.labels.index(result.prediction)
    odds = lambda text: float(log_odds(row_logits(predictor, [{**row, "text": text}]), target)[0])  # noqa: E731
    colours = predictor.word_substitutes["text"].places["square\t"]
    assert "red?" in colours and len(colours) >= 2  # "is the square X?" in the tiny table
    edits = {"is the square": odds("is the square")} | {
        f"is the square {c}": odds(f"is the square {c}") for c in colours if c != "red?"}
    worst = min(edits, key=edits.get)
    words = dict(result.words["text"])
    assert words["red?"] == pytest.approx(odds(row["text"]) - edits[worst], abs=1e-4)
    edit = result.edits["text"][3]
    assert edit["word"] == "red?" and edit["edit"] == worst
    assert edit["answer"] == predictor.predict([{"image": row["image"], "question": worst}])["prediction"][0]
    # "is" has no alternative in its place: its one edit is deleting it (occlusion's value).
    assert words["is"] == pytest.approx(odds(row["text"]) - odds("the square red?"), abs=1e-4)
    assert result.as_dict()["edits"]["text"][3] == edit


def test_word_substitutes_are_saved_and_older_models_explain_by_gradients(film_model, tmp_path):
    import shutil

    predictor, folder, row = film_model
    loaded = Predictor.load(folder / "model")
    assert loaded.word_substitutes["text"].places == predictor.word_substitutes["text"].places
    older = tmp_path / "older"
    shutil.copytree(folder / "model", older)
    (older / "word_substitutes.json").unlink()
    old = Predictor.load(older)
    assert explain_row(old, row).word_method == {"text": "integrated-gradients"}
    with pytest.raises(ValueError, match="word_substitutes.json"):
        explain_row(old, row, words="counterfactual")


def test_integrated_gradients_through_a_transformers_encoder(tmp_path):
    """Token attributions of a (tiny, random) BERT summed per word: "shape?" is two tokens; they add
    up to the change from a baseline of [PAD] tokens, which the tokenizer also reads from text."""
    from conftest import write_shapes_csv
    from test_encoders import write_tiny_bert

    bert = write_tiny_bert(tmp_path / "bert")
    table = write_shapes_csv(tmp_path)
    config = tiny_config(tmp_path, table, **{"encoders.text": {"name": "hf", "options": {"target": str(bert)}},
                                            "fusion.name": "film", "train.epochs": 1})
    predictor = Predictor(config).fit()
    row = {"image": str(next((tmp_path / "images").glob("*.png"))), "text": "what color is the shape?"}
    result = explain_row(predictor, row)
    assert [w for w, _ in result.words["text"]] == ["what", "color", "is", "the", "shape?"]
    target = predictor.labels.index(result.prediction)
    odds = lambda text: float(log_odds(row_logits(predictor, [{**row, "text": text}]), target)[0])  # noqa: E731
    change = odds(row["text"]) - odds(" ".join(["[PAD]"] * 6))
    assert sum(a for _, a in result.words["text"]) == pytest.approx(change, abs=0.02)
    assert any(abs(a) > 1e-6 for _, a in result.words["text"])


def test_heatmap_changes_when_the_weights_are_randomised(film_model):
    """Adebayo et al.'s model-randomisation check: a map that survives random weights explains the
    image, not the model."""
    predictor, folder, row = film_model
    trained = np.asarray(explain_row(predictor, row).heatmaps["image"]).ravel()
    randomised = Predictor.load(folder / "model")
    torch.manual_seed(123)
    for module in list(randomised.model.fusion.modules()) + list(randomised.model.head.modules()):
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    for parameter in randomised.model.encoders["image"].parameters():
        torch.nn.init.normal_(parameter, std=0.2)
    shuffled = np.asarray(explain_row(randomised, row).heatmaps["image"]).ravel()
    assert not np.allclose(trained, shuffled)
    assert spearmanr(trained, shuffled).statistic < 0.9


def test_explain_command_writes_json_and_overlay(film_model, tmp_path):
    _, folder, row = film_model
    out = tmp_path / "why"
    done = subprocess.run([sys.executable, "-m", "mmfuse.cli", "explain", str(folder / "model"),
                           "--image", row["image"], "--text", row["text"], "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    saved = json.loads((out / "explanation.json").read_text())
    assert saved["prediction"] in done.stdout and set(saved["shapley"]) == {"image", "text"}
    from PIL import Image

    assert Image.open(out / "image_heatmap.png").size == Image.open(row["image"]).size
    # A wrong input is one line, not a traceback.
    bad = subprocess.run([sys.executable, "-m", "mmfuse.cli", "explain", str(folder / "model"),
                          "--image", str(tmp_path / "missing.png"), "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "missing.png" in bad.stderr + bad.stdout


def test_report_gallery_explains_right_and_wrong_rows(film_model, tmp_path):
    predictor, folder, _ = film_model
    from conftest import write_shapes_csv

    table = write_shapes_csv(tmp_path)
    predicted = predictor.predict(table)
    import pandas as pd

    truth = pd.read_csv(table)["answer"].astype(str)
    right = int((predicted["prediction"].astype(str).values == truth.values).sum())
    predictor.config.report.gallery = 2
    predictor.evaluate(table, report_dir=tmp_path / "report")
    report = (tmp_path / "report" / "report.md").read_text()
    assert f"### Answered right ({right} rows)" in report
    assert f"### Answered wrong ({len(truth) - right} rows)" in report
    pictures = re.findall(r"\]\((gallery/[^)]+\.png)\)", report)
    assert 1 <= len(pictures) <= 4 and all((tmp_path / "report" / p).is_file() for p in pictures)
    assert len(re.findall(r"\*\*[^*]+\*\*<sup>[+-]\d", report)) == 2 * len(pictures)  # two marked words a row
    predictor.config.report.gallery = 0
    predictor.evaluate(table, report_dir=tmp_path / "plain")
    assert "Explained rows" not in (tmp_path / "plain" / "report.md").read_text()
