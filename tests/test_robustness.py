import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import tiny_config
from mmfuse import Predictor
from mmfuse.cli import app
from mmfuse.config import DataConfig
from mmfuse.modalities import MODALITIES
from mmfuse.modalities.text import token_drop, typo
from mmfuse.robustness import NOISES, perturbation, relative_robustness


@pytest.mark.parametrize("modality,noise", [(m, n) for m, names in NOISES.items() for n in names])
def test_level_zero_is_clean_and_noise_is_repeatable(modality, noise, tmp_path):
    spec = MODALITIES[modality]  # every registered modality's noises, on its own example input
    value = spec.load([spec.example_file(tmp_path, 0)], DataConfig())[0]
    clean = perturbation(modality, noise, 0.0)(value, "k")
    assert clean is value
    once, again = (perturbation(modality, noise, 0.5, seed=1)(value, "k") for _ in range(2))
    as_data = (lambda v: v) if isinstance(value, str) else (lambda v: np.asarray(v).tobytes())
    assert as_data(once) == as_data(again) and as_data(once) != as_data(value)


def test_text_noise_never_empties_a_question():
    import random

    assert token_drop("what color", 1.0, random.Random(0)) == "what"
    assert typo("ab", 1.0, random.Random(0)) == "ba"


def test_relative_robustness():
    assert relative_robustness([0, 0.5, 1], [1.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert relative_robustness([0, 1], [0.8, 0.4]) == pytest.approx(0.75)


def test_curves_start_at_the_clean_metric_and_reach_the_report(tmp_path, shapes_csv):
    predictor = Predictor(tiny_config(tmp_path, shapes_csv))
    predictor.fit()
    clean = predictor.evaluate()["metrics"]["accuracy"]
    curves = predictor.robustness(levels=(0.0, 0.5))
    assert set(curves["noise"]) == {"gaussian", "blur", "occlusion", "token_drop", "typo"}
    assert (curves[curves["level"] == 0.0]["accuracy"] == clean).all()
    predictor.save(tmp_path / "model")
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "model"), "--robustness"])
    assert result.exit_code == 0, result.output
    assert "relative robustness" in (tmp_path / "model" / "report" / "report.md").read_text()
    assert (tmp_path / "model" / "report" / "robustness.png").is_file()
    assert len(pd.read_csv(tmp_path / "model" / "report" / "robustness.csv")) == 5 * 5
