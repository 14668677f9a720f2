"""mmfuse explain: a Grad-CAM heatmap over image regions, word occlusion and exact modality Shapley
values, from the Python API and the command line."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from conftest import tiny_config
from mmfuse import Predictor
from mmfuse.explain import _prior, explain_row, row_log_scores


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
    result = explain_row(predictor, row)
    grid = np.asarray(result.heatmaps["image"])
    # tiny_image at 16 px: its first block's 16x16 map (the deepest at least 16 regions wide)
    assert grid.shape == (16, 16) and grid.min() >= 0 and grid.max() == pytest.approx(1.0)
    assert [w for w, _ in result.words["text"]] == ["is", "the", "square", "red?"]
    # Occlusion: each word's value is log p(with) - log p(without), recomputed here for one word.
    target = predictor.labels.index(result.prediction)
    with_all = row_log_scores(predictor, [row])[0, target]
    without = row_log_scores(predictor, [{**row, "text": "is the square"}])[0, target]
    assert result.words["text"][3][1] == pytest.approx(float(with_all - without), abs=1e-5)
    # Shapley efficiency: the values add up to p(both present) - p(none present).
    prior = float(_prior(predictor)[target])
    assert sum(result.shapley.values()) == pytest.approx(result.probability - prior, abs=1e-5)


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
