"""The command line over the same core: exit codes, messages, and files written."""
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from conftest import tiny_config
from mmfuse.cli import app, main

runner = CliRunner()


@pytest.fixture
def config_file(tmp_path, shapes_csv):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp_path, shapes_csv, **{"train.epochs": 1})))
    return path


def run_main(monkeypatch, capsys, *args):
    monkeypatch.setattr("sys.argv", ["mmfuse", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, capsys.readouterr()


def test_train_evaluate_predict(tmp_path, config_file, shapes_csv):
    result = runner.invoke(app, ["train", str(config_file), "--set", "fusion.name=late"])
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and "model saved" in result.output
    model = tmp_path / "run" / "model"
    assert (model / "report" / "report.md").is_file()
    assert yaml.safe_load((model / "config.yaml").read_text())["fusion"]["name"] == "late"

    result = runner.invoke(app, ["evaluate", str(model), "--split", "test"])
    assert result.exit_code == 0 and "macro_f1" in result.output

    image = shapes_csv.parent / "images" / "img1.png"
    result = runner.invoke(app, ["predict", str(model), "--image", str(image), "--text", "what color is the square?"])
    assert result.exit_code == 0 and result.output.startswith("prediction: ")

    table = pd.read_csv(shapes_csv).drop(columns=["answer"])
    table.to_csv(shapes_csv.parent / "new.csv", index=False)
    out = tmp_path / "preds.csv"
    result = runner.invoke(app, ["predict", str(model), "--data", str(shapes_csv.parent / "new.csv"), "--out", str(out)])
    assert result.exit_code == 0
    preds = pd.read_csv(out)
    assert len(preds) == len(table) and preds["row"].tolist() == list(range(1, len(table) + 1))


def test_data_check_lists_bad_rows(tmp_path, config_file, shapes_csv):
    table = pd.read_csv(shapes_csv)
    table.loc[3, "image"] = "images/gone.png"
    table.to_csv(shapes_csv, index=False)
    result = runner.invoke(app, ["data", "check", str(shapes_csv), "--config", str(config_file)])
    assert result.exit_code == 0 and "row 4" in result.output and "not found" in result.output
    assert runner.invoke(app, ["data", "check", str(shapes_csv), "--config", str(config_file), "--strict"]).exit_code == 2


def test_user_errors_exit_2_with_one_line(monkeypatch, capsys, tmp_path, config_file):
    code, out = run_main(monkeypatch, capsys, "train", str(config_file), "--set", "fusion.name=nope")
    assert code == 2 and out.err.startswith("error: unknown fusion 'nope'") and "Traceback" not in out.err
    code, out = run_main(monkeypatch, capsys, "predict", str(tmp_path / "missing"), "--text", "hi")
    assert code == 2 and "not a model directory" in out.err
