"""A new user's first hour (issue 16): each defect as it was met, reproduced as written."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from mmfuse.compare import with_compare_settings
from mmfuse.config import load_config
from mmfuse.evaluate import write_report
from mmfuse.tasks import create_task
from mmfuse.metric_format import format_metric

HEAVY = ("torch", "lightning", "torchmetrics", "pandas", "transformers")


def modules_after(code: str) -> set[str]:
    """The top-level modules a fresh interpreter has imported after running `code`."""
    probe = code + "\nimport sys, json; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def test_import_mmfuse_loads_no_heavy_library():
    """`import mmfuse` took 5.8 s: it imported torch, Lightning and torchmetrics up front."""
    loaded = modules_after("import mmfuse")
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_cli_help_loads_no_heavy_library():
    """`mmfuse --help` took 7.7 s, paid by every command."""
    loaded = modules_after(
        "from typer.testing import CliRunner\nfrom mmfuse.cli import app\n"
        "result = CliRunner().invoke(app, ['--help'])\nassert result.exit_code == 0, result.output\n"
        "assert 'train' in result.output")
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_predicting_imports_neither_lightning_nor_torchmetrics():
    loaded = modules_after("from mmfuse import Predictor\nPredictor.load")
    assert "torch" in loaded  # the model itself
    assert not loaded & {"lightning", "torchmetrics", "pytorch_lightning"}


def test_public_names_still_resolve():
    import mmfuse

    assert mmfuse.load == mmfuse.Predictor.load
    assert {"Config", "Predictor", "load_config", "MmfuseError"} <= set(dir(mmfuse))


# ----- AUROC on a split that lacks a class ----------------------------------------------------

def test_auroc_is_undefined_when_a_class_is_absent():
    """Printed 0.0000 (or 0.92 beside accuracy 1.0) when a class had no rows in the split."""
    labels = ["a", "b", "c"]
    target = torch.tensor([0, 0, 1, 1])  # no "c"
    scores = torch.tensor([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1]])
    metrics, _, _ = create_task("classification").metrics(scores, target, labels)
    assert metrics["accuracy"] == 1.0
    assert math.isnan(metrics["auroc"])
    assert format_metric(metrics["auroc"]) == "undefined"
    # every class present: a real number
    full, _, _ = create_task("classification").metrics(torch.cat([scores, torch.tensor([[0.1, 0.1, 0.8]])]),
                                                       torch.tensor([0, 0, 1, 1, 2]), labels)
    assert full["auroc"] == 1.0


def test_multilabel_auroc_is_undefined_for_a_tag_on_every_row():
    target = torch.tensor([[1, 0], [1, 1]])  # tag 0 on every row: no negatives
    metrics, _, _ = create_task("multilabel").metrics(torch.tensor([[0.9, 0.2], [0.8, 0.7]]), target, ["x", "y"])
    assert math.isnan(metrics["auroc"])


def test_report_says_undefined_and_metrics_json_stays_json(tmp_path):
    result = {"metrics": {"accuracy": 1.0, "auroc": float("nan")}, "per_class": [], "confusion": None,
              "modality_contribution": {"all": 1.0}, "rows": 4, "headline": "accuracy"}
    write_report(result, tmp_path, title="t", labels=["a", "b"])
    assert "| auroc | undefined |" in (tmp_path / "report.md").read_text()
    stored = json.loads((tmp_path / "metrics.json").read_text())  # NaN would not be valid JSON
    assert stored["metrics"]["auroc"] is None
    assert format_metric(stored["metrics"]["auroc"]) == "undefined"


# ----- compare: what the user typed wins --------------------------------------------------------

def test_compare_command_line_set_wins_over_the_config_compare_set(tmp_path):
    """`compare ... --set train.epochs=1` was silently overridden by the config's compare.set."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"source": "easy_vqa"},
        "compare": {"set": {"train.epochs": 4, "train.lr": 0.01}}}))
    overrides = ["train.epochs=1"]
    config = with_compare_settings(load_config(path, overrides), overrides)
    assert config.train.epochs == 1  # typed on the command line
    assert config.train.lr == 0.01  # from compare.set, not overridden
    assert config.compare.set == {}  # applied once
    assert with_compare_settings(config).train.epochs == 1  # run_comparison applies it again: no change


def test_compare_cli_passes_the_precedence_on(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import mmfuse.compare as compare
    from mmfuse.cli import app

    seen = {}
    monkeypatch.setattr(compare, "run_comparison", lambda cfg, *a, **k: seen.setdefault("epochs", cfg.train.epochs))
    path = Path(tmp_path / "c.yaml")
    path.write_text(yaml.safe_dump({"data": {"source": "easy_vqa"}, "compare": {"set": {"train.epochs": 4}}}))
    result = CliRunner().invoke(app, ["compare", str(path), "--fusions", "concat", "--set", "train.epochs=1"])
    assert result.exit_code == 0, result.output
    assert seen["epochs"] == 1
