"""A new user's first hour (issue 16), the defects met with a trained model: each reproduced as written."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import tiny_config, write_shapes_csv
from mmfuse import Predictor
from mmfuse.cli import app, main
from mmfuse.config import load_config
from mmfuse.errors import ConfigError, DataError

runner = CliRunner()
QUESTION = "what color is the square?"


def run_main(monkeypatch, capsys, *args):
    monkeypatch.setattr("sys.argv", ["mmfuse", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, capsys.readouterr()


def mmfuse(*args, cwd: Path) -> subprocess.CompletedProcess:
    """The real command in a fresh interpreter: what a user's terminal shows, logging included."""
    code = "import sys; from mmfuse.cli import main; sys.argv = ['mmfuse', *sys.argv[1:]]; main()"
    env = {**os.environ, "PYTHONWARNINGS": "default"}  # warnings shown as a user's terminal shows them
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model whose config binds a split column, trained in this process, unsaved; and its saved copy."""
    folder = tmp_path_factory.mktemp("model")
    table = write_shapes_csv(folder)
    frame = pd.read_csv(table)
    frame["split"] = [("train", "train", "train", "val", "test")[i // 2 % 5] for i in range(len(frame))]
    frame.to_csv(table, index=False)
    config = tiny_config(folder, table, **{"train.epochs": 1, "data.columns.split": "split"})
    predictor = Predictor(config).fit()
    predictor.save(folder / "model")
    return predictor, folder


def new_table(folder: Path, **renamed: str) -> pd.DataFrame:
    """The training table without its split column, image paths absolute, columns renamed."""
    frame = pd.read_csv(folder / "table.csv").drop(columns=["split"])
    frame["image"] = str(folder) + "/" + frame["image"]
    return frame.rename(columns=renamed)


# ----- 1. a table without a model's input column: an error, a named column, or said out loud ------

def test_predict_refuses_a_table_without_the_question_column(trained, tmp_path):
    """`predict MODEL --data new.csv` (columns image,text) answered without the question, silently."""
    _, folder = trained
    new_table(folder, question="text").drop(columns=["answer"]).to_csv(tmp_path / "new.csv", index=False)
    result = runner.invoke(app, ["predict", str(folder / "model"), "--data", str(tmp_path / "new.csv")])
    assert result.exit_code != 0
    message = str(result.exception)
    assert "column 'question' (data.columns.text) not found" in message
    assert "the table has 2 columns: 'image', 'text'" in message
    assert "--column text=NAME" in message and "--column text=" in message


def test_predict_with_the_column_named_equals_the_table_as_trained(trained, tmp_path):
    predictor, folder = trained
    renamed = new_table(folder, question="text").drop(columns=["answer"])
    renamed.to_csv(tmp_path / "new.csv", index=False)
    out = tmp_path / "preds.csv"
    result = runner.invoke(app, ["predict", str(folder / "model"), "--data", str(tmp_path / "new.csv"),
                                 "--column", "text=text", "--out", str(out)])
    assert result.exit_code == 0, result.output
    expected = predictor.predict(new_table(folder).drop(columns=["answer"]))
    assert pd.read_csv(out)["prediction"].tolist() == expected["prediction"].tolist()
    # The Python API the same way
    assert predictor.predict(renamed, columns={"text": "text"}).equals(expected)


def test_an_input_left_out_on_purpose_is_said_so(trained, caplog):
    predictor, folder = trained
    images = new_table(folder)[["image"]]
    with pytest.raises(DataError, match="column 'question'"):
        predictor.predict(images)
    caplog.clear()
    out = predictor.predict(images, columns={"text": None})
    assert len(out) == len(images)
    assert "predicting without text: left out on purpose" in caplog.text
    # the same predictions as rows that have no question
    alone = predictor.predict([{"image": path} for path in images["image"]])
    assert out["prediction"].tolist() == alone["prediction"].tolist()


def test_input_dicts_with_a_key_the_model_does_not_read_are_refused(trained):
    """Predictor.predict([{"image": ..., "text": ...}]) ignored "text" (the model reads "question")."""
    predictor, folder = trained
    image = str(folder / "images" / "img0.png")
    with pytest.raises(DataError, match=r"input key 'text' is no column this model reads.*columns=\{'text': 'text'\}"):
        predictor.predict([{"image": image, "text": QUESTION}])
    named = predictor.predict([{"image": image, "text": QUESTION}], columns={"text": "text"})
    assert named.equals(predictor.predict([{"image": image, "question": QUESTION}]))


def test_columns_name_only_inputs_of_the_model_or_the_label(trained):
    predictor, folder = trained
    with pytest.raises(ConfigError, match="'audio' is neither an input of this model"):
        predictor.predict(new_table(folder), columns={"audio": "sound"})
    with pytest.raises(ConfigError, match="every input"):
        predictor.predict(new_table(folder), columns={"image": None, "text": None})


# ----- 2. a bad single-row input: one line naming the option ------------------------------------

def test_predict_a_missing_image_ends_in_one_line_naming_the_option(trained, tmp_path):
    _, folder = trained
    result = mmfuse("predict", folder / "model", "--image", "missing.png", "--text", QUESTION, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [f"error: --image missing.png: file not found: {tmp_path / 'missing.png'}"]
    assert result.stdout == ""


# ----- 3. a table given to evaluate is evaluated whole: no split column needed -------------------

def test_evaluate_a_table_without_the_split_column(trained, tmp_path):
    predictor, folder = trained
    table = new_table(folder)
    result = predictor.evaluate(table)  # after fit(), unsaved: failed with "column 'split' not found"
    assert result["rows"] == len(table)
    table.to_csv(tmp_path / "new.csv", index=False)
    result = runner.invoke(app, ["evaluate", str(folder / "model"), "--data", str(tmp_path / "new.csv"),
                                 "--report", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    assert f"({len(table)} rows)" in result.output


def test_evaluate_names_columns_too(trained, tmp_path):
    _, folder = trained
    new_table(folder, question="text", answer="truth").to_csv(tmp_path / "new.csv", index=False)
    args = ["evaluate", str(folder / "model"), "--data", str(tmp_path / "new.csv"), "--report", str(tmp_path / "r")]
    result = runner.invoke(app, args)
    assert result.exit_code != 0 and "column 'question' (data.columns.text) not found" in str(result.exception)
    result = runner.invoke(app, [*args, "--column", "text=text", "--column", "label=truth"])
    assert result.exit_code == 0, result.output


# ----- 4. a frozen encoder with random weights is stored, so the model loads ----------------------

def test_a_frozen_random_encoder_is_saved_and_loads(tmp_path, shapes_csv):
    config = tiny_config(tmp_path, shapes_csv, **{"train.epochs": 1, "encoders.image.trainable": False})
    predictor = Predictor(config).fit()
    predictor.save(tmp_path / "model")
    loaded = Predictor.load(tmp_path / "model")  # failed: "fingerprint ... different weights or preprocessing"
    assert json.loads((tmp_path / "model" / "encoders.json").read_text())["image"]["stored"] is True
    table = pd.read_csv(shapes_csv)
    table["image"] = str(tmp_path) + "/" + table["image"]
    assert torch.equal(predictor.predict_scores(table)[1], loaded.predict_scores(table)[1])
    # the checkpoints keep it too (a resumed run in a new process needs it)
    state = torch.load(predictor.fit_summary["last_checkpoint"], weights_only=True)["state_dict"]
    assert any(key.startswith("model.encoders.image.") for key in state)


def test_random_weights_are_never_taken_for_rebuildable_ones():
    from mmfuse.encoders import create_encoder

    assert not create_encoder("image", "tiny_image", trainable=False).rebuilt_on_load
    assert not create_encoder("image", "timm:resnet18", trainable=False, pretrained=False).rebuilt_on_load


# ----- 5. defaults that surprise ----------------------------------------------------------------

def test_yaml_booleans_as_labels_say_to_quote_them(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  labels: [yes, no]\n")
    with pytest.raises(ConfigError, match=r"YAML read yes/no as true/false: quote them: labels: \['yes', 'no'\]"):
        load_config(path)
    with pytest.raises(ConfigError, match="quote them"):
        load_config(None, ["data.labels=[yes, no]"])
    path.write_text("data:\n  labels: ['yes', 'no']\n")
    assert load_config(path).data.labels == ["yes", "no"]


def test_output_dir_defaults_to_the_config_name(tmp_path):
    path = tmp_path / "my_table.yaml"
    path.write_text("data:\n  source: new.csv\n")
    assert load_config(path).output_dir == "runs/my_table"
    assert load_config(path, ["output_dir=elsewhere"]).output_dir == "elsewhere"
    assert load_config(None).output_dir == "runs/easy_vqa"  # the built-in's demo
    from mmfuse.config import parse_config

    assert parse_config({"data": {"source": "data/new.csv"}}).output_dir == "runs/new"


def test_training_refuses_to_replace_a_model_of_other_data(trained, tmp_path, monkeypatch, capsys):
    _, folder = trained
    other = write_shapes_csv(tmp_path)
    config = tiny_config(tmp_path, other, **{"train.epochs": 1})
    config["output_dir"] = str(folder)  # where the trained model lives
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    before = (folder / "model" / "model.safetensors").read_bytes()
    code, out = run_main(monkeypatch, capsys, "train", str(tmp_path / "c.yaml"))
    assert code == 2
    assert out.err.startswith(f"error: {folder / 'model'} holds a model trained with another config (data.source ")
    assert "--output runs/NAME" in out.err
    assert (folder / "model" / "model.safetensors").read_bytes() == before


def test_a_cli_training_run_without_a_test_split(tmp_path):
    """One `mmfuse train` in a fresh process, as a user runs it, on a config naming no output_dir
    and no test split: where the model goes, what is said about testing, TensorBoard, no noise."""
    table = write_shapes_csv(tmp_path)
    config = tiny_config(tmp_path, table, **{"train.epochs": 1, "data.test_fraction": 0.0})
    del config["output_dir"]
    (tmp_path / "shapes.yaml").write_text(yaml.safe_dump(config))
    result = mmfuse("train", "shapes.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    run = Path("runs/shapes")
    # 5: the run is named after the config, not runs/easy_vqa
    assert (tmp_path / run / "model" / "config.yaml").is_file()
    assert not (tmp_path / "runs" / "easy_vqa").exists()
    # 5: no test split is said, with the way out, and the validation report is written
    assert (f"no test split: set data.test_fraction (or data.test_source), or use mmfuse evaluate "
            f"{run / 'model'} --data TABLE") in output
    assert "\nval (" in output and "accuracy" in output
    assert "Validation split" in (tmp_path / run / "model" / "report" / "report.md").read_text()
    # 7: where the TensorBoard logs are, with the config as hyper-parameters and the learning rate
    assert f"TensorBoard logs: {run / 'logs' / 'version_0'} (tensorboard --logdir {run / 'logs'})" in output
    hparams = yaml.safe_load((tmp_path / run / "logs" / "version_0" / "hparams.yaml").read_text())
    assert hparams["fusion.name"] == "concat" and hparams["train.epochs"] == 1
    assert "lr-AdamW" in scalar_tags(tmp_path / run / "logs" / "version_0")
    # 8: only our own lines
    for noise in ("GPU available", "TPU available", "litlogger", "LeafSpec", "eval mode", "INFO:",
                  "`Trainer.fit` stopped"):
        assert noise not in output, noise
    # 5: evaluate on the missing test split says what to do instead
    code = runner.invoke(app, ["evaluate", str(tmp_path / run / "model")])
    assert code.exit_code != 0
    assert str(code.exception) == "split 'test' has no rows; evaluate a table with --data TABLE, or --split val"
    # 7: a second run logs beside the first, not into it
    again = runner.invoke(app, ["train", str(tmp_path / "shapes.yaml"), "--output", str(tmp_path / run)])
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in (tmp_path / run / "logs").iterdir()) == ["version_0", "version_1"]


def scalar_tags(log_dir: Path) -> list[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return events.Tags()["scalars"]


# ----- 8. the Python API prints only our own lines ----------------------------------------------

def test_python_api_training_prints_no_lightning_banner(tmp_path):
    table = write_shapes_csv(tmp_path)
    config = tiny_config(tmp_path, table, **{"train.epochs": 1})
    code = f"from mmfuse import Predictor\nPredictor({config!r}).fit()\nprint('done')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONWARNINGS": "default"})
    assert result.returncode == 0, result.stderr
    assert result.stdout == "done\n"
    for noise in ("GPU available", "litlogger", "LeafSpec", "eval mode", "INFO:"):
        assert noise not in result.stderr, result.stderr


# ----- 7. align logs to TensorBoard too ------------------------------------------------------------

def test_align_logs_losses_and_retrieval_metrics(tmp_path):
    from test_align import align_config, make_caption_table
    from mmfuse.align import train_alignment
    from mmfuse.config import parse_config

    config = parse_config(align_config(tmp_path, make_caption_table(tmp_path), epochs=3))
    run = train_alignment(config, echo=lambda _: None)
    assert run.summary["tensorboard"] == str(tmp_path / "run" / "logs" / "version_0")
    tags = scalar_tags(Path(run.summary["tensorboard"]))
    assert "train_loss" in tags and "test_t2i_R@1" in tags


def test_loading_minilm_draws_no_progress_bar(tmp_path):
    code = "from mmfuse.encoders import create_encoder\ncreate_encoder('text', 'minilm')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Loading weights" not in result.stderr, result.stderr
