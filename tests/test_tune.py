"""`mmfuse tune` on real Optuna over the tiny encoders: the study, resuming, best.yaml, pruning."""
from __future__ import annotations

import subprocess
import sys

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from conftest import tiny_config, write_shapes_csv
from mmfuse.cli import app, main
from mmfuse.config import load_config, parse_config
from mmfuse.predictor import Predictor
from mmfuse.tune import run_tune

runner = CliRunner()
SPACE = {"train.lr": {"low": 1.0e-3, "high": 1.0e-1, "log": True},
         "fusion.name": {"choices": ["concat", "late"]},
         "head.hidden": {"low": 8, "high": 16, "step": 8}}


def tune_raw(tmp_path, **space) -> dict:
    return tiny_config(tmp_path, write_shapes_csv(tmp_path), **{"train.epochs": 2, "tune.space": space or SPACE})


def table_rows(report: str) -> list[str]:
    return [line for line in report.split("## Trials")[1].split("##")[0].splitlines() if line.startswith("| ")][1:]


def test_tune_writes_study_best_config_and_report(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tune_raw(tmp_path)))
    result = runner.invoke(app, ["tune", str(path), "--trials", "3"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "run" / "tune"
    assert (folder / "study.db").is_file() and "best: trial" in result.output
    study = optuna.load_study(study_name="mmfuse", storage=f"sqlite:///{folder / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert study.trials[0].params == {"train.lr": 0.01, "fusion.name": "concat", "head.hidden": 16}  # the config's own
    best = load_config(folder / "best.yaml")  # the full config, loadable as it is
    assert best.train.lr == study.best_params["train.lr"] and best.fusion.name == study.best_params["fusion.name"]
    assert best.head.hidden == study.best_params["head.hidden"] and best.output_dir == str(folder / "best")
    report = (folder / "report.md").read_text()
    assert len(table_rows(report)) == 3 and (folder / "history.png").is_file() and (folder / "importances.png").is_file()
    assert not list(folder.glob("trial_*/checkpoints"))  # trials keep their logs only
    trained = runner.invoke(app, ["train", str(folder / "best.yaml")])
    assert trained.exit_code == 0, trained.output
    assert (folder / "best" / "model" / "config.yaml").is_file()


def test_a_stopped_study_resumes_with_only_the_missing_trials(tmp_path, monkeypatch):
    config = parse_config(tune_raw(tmp_path))
    assert len(run_tune(config, 2, echo=lambda _: None)["trials"]) == 2
    real_fit = Predictor.fit

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Predictor, "fit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_tune(config, 3, echo=lambda _: None)  # Ctrl+C in the third trial
    storage = f"sqlite:///{tmp_path / 'run' / 'tune' / 'study.db'}"
    optuna.load_study(study_name="mmfuse", storage=storage).ask()  # a trial left running by a kill -9
    fits = []
    monkeypatch.setattr(Predictor, "fit", lambda self, *a, **k: fits.append(1) or real_fit(self, *a, **k))
    lines = []
    result = run_tune(config, 3, echo=lines.append)
    assert len(fits) == 1 and lines[0].endswith("2 trial(s) finished, 1 to run")
    states = result["trials"]["state"].tolist()
    assert states.count("complete") == 3 and states.count("fail") == 2 and "running" not in states
    assert len(table_rows(result["report"].read_text())) == 5
    assert run_tune(config, 3, echo=lines.append)["trials"]["state"].tolist() == states  # nothing left to run


def test_a_wrong_field_in_the_space_fails_at_once_naming_it(tmp_path, monkeypatch, capsys):
    for field, spec in (("fusion.nme", {"choices": ["film"]}), ("head.dropout", {"low": 0.1, "high": 1.5}),
                        ("fusion.name", {"choices": ["film", "nope"]})):
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(tiny_config(tmp_path, tmp_path / "no_table.csv", **{"tune.space": {field: spec}})))
        monkeypatch.setattr("sys.argv", ["mmfuse", "tune", str(path)])
        with pytest.raises(SystemExit) as exit_info:
            main()
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1 and field in err and "Traceback" not in err, err
    assert not (tmp_path / "run" / "tune").exists()


def test_optuna_is_optional(monkeypatch, capsys, tmp_path):
    code = "import sys, mmfuse, mmfuse.config, mmfuse.cli; assert 'optuna' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    for name in [m for m in sys.modules if m == "mmfuse.tune" or m.startswith(("mmfuse.tune.", "optuna"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if not installed
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tune_raw(tmp_path)))
    monkeypatch.setattr("sys.argv", ["mmfuse", "tune", str(path)])
    with pytest.raises(SystemExit):
        main()
    assert "pip install 'mmfuse[tune]'" in capsys.readouterr().err


class PruneOdd(optuna.pruners.BasePruner):
    """Prunes every odd-numbered trial at its first report."""

    def prune(self, study, trial) -> bool:
        return trial.number % 2 == 1


def test_pruned_trials_stop_early_and_the_study_completes(tmp_path, monkeypatch):
    monkeypatch.setattr("mmfuse.tune.study.make_pruner", lambda tune: PruneOdd())
    result = run_tune(parse_config(tune_raw(tmp_path)), 3, echo=lambda _: None)
    study = result["study"]
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED", "COMPLETE"]
    assert list(study.trials[1].intermediate_values) == [0]  # reported by the Lightning callback after epoch 1
    assert list(study.trials[0].intermediate_values) == [0, 1]
    assert result["best"].number in (0, 2) and result["best_config"].is_file()
    assert "| 1 | pruned |" in result["report"].read_text()
