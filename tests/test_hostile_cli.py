"""Hostile input and faults: YAML bombs, signals and kills mid-training, damaged files, undecodable
or hostile tables. Every case is real: YAML files, CSV bytes, subprocesses and their signals."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from conftest import tiny_config, write_shapes_csv
from mmfuse.cli import main
from mmfuse.config import DataConfig, load_config
from mmfuse.data.manifest import load_manifest
from mmfuse.errors import ConfigError, DataError


def run_main(monkeypatch, capsys, *args):
    monkeypatch.setattr("sys.argv", ["mmfuse", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, capsys.readouterr()


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err[:2000]
    return lines[0]


def write_config(tmp_path: Path, source: Path, **overrides) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp_path, source, **overrides)))
    return path


# ----- 4. YAML bombs ----------------------------------------------------------------------------

def yaml_bomb(levels: int) -> str:
    """Billion laughs: each level a list of nine aliases to the one before (9**levels "lol"s)."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, levels):
        lines.append(f"a{level}: &a{level} [" + ",".join([f"*a{level - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


# Seven levels (4.8 million strings) is far past the budget and still bounded (about a second and
# 1 GB) if the fix is ever lost; the nine-level original took 87 s and 13 GB before the fix.
BOMB = yaml_bomb(7)


def test_yaml_bomb_config_is_refused_at_once_in_one_line(tmp_path, monkeypatch, capsys):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    assert len(BOMB) < 600
    start = time.perf_counter()
    code, out = run_main(monkeypatch, capsys, "train", path)
    assert time.perf_counter() - start < 1.0
    line = one_line_error(out.err)
    assert code == 2 and str(path) in line and "refused" in line and len(out.err) < 300 and "lol" not in out.err

    tracemalloc.start()
    with pytest.raises(ConfigError):
        load_config(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20 * 2**20  # flat: the value is never built


def test_yaml_bomb_as_a_model_config_is_refused(tmp_path, monkeypatch, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.yaml").write_text(BOMB)
    for name in ("model.safetensors", "labels.json", "encoders.json"):
        (model / name).write_text("{}")
    start = time.perf_counter()
    code, out = run_main(monkeypatch, capsys, "predict", model, "--text", "hi")
    assert time.perf_counter() - start < 1.0
    assert code == 2 and "config.yaml" in one_line_error(out.err) and len(out.err) < 300


def test_yaml_aliases_within_the_budget_still_work(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("fusion: &f {name: concat, dim: 32}\nhead:\n  hidden: 8\ncompare:\n  set: {<<: *f}\n")
    config = load_config(path)
    assert config.fusion.dim == 32 and config.compare.set == {"name": "concat", "dim": 32}


def test_echoed_values_and_oversized_files_are_cut(tmp_path, monkeypatch, capsys):
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump({"fusion": {"dim": "x" * 100_000}, "head": {"hidden": list(range(10_000))}}))
    code, out = run_main(monkeypatch, capsys, "train", path)
    line = one_line_error(out.err)
    assert code == 2 and "fusion.dim" in line and "head.hidden" in line and len(line) < 800

    path.write_text("# padding\n" * 200_000)  # 2 MB
    code, out = run_main(monkeypatch, capsys, "train", path)
    assert code == 2 and "larger than" in one_line_error(out.err)

    path.write_text("fusion: [unclosed\n  dim: 3\n")
    code, out = run_main(monkeypatch, capsys, "train", path)
    assert code == 2 and "not valid YAML" in one_line_error(out.err)


# ----- 6. interrupted training, damaged checkpoints and models -------------------------------

def test_sigterm_mid_training_saves_a_resumable_checkpoint(tmp_path, monkeypatch, capsys):
    table = write_shapes_csv(tmp_path)
    config = write_config(tmp_path, table, **{"train.epochs": 500})
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    stale = checkpoints / ".last.ckpt.999.dead.partial"  # what a write killed earlier leaves
    stale.write_bytes(b"\0" * 1000)
    process = subprocess.Popen([sys.executable, "-m", "mmfuse.cli", "train", str(config)],
                               stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    watchdog = threading.Timer(120, process.kill)  # never hang the suite on a run that stalls
    watchdog.start()
    try:
        for line in process.stderr:  # EpochSummary: training is under way
            if line.startswith("epoch 2/500"):
                break
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        watchdog.cancel()
        process.kill()
    last = checkpoints / "last.ckpt"
    assert process.returncode == 128 + signal.SIGTERM, err[-2000:]
    message = err.strip().splitlines()[-1]
    assert message.startswith("error: training stopped by SIGTERM") and str(last) in message
    assert f"mmfuse train {config} --resume {last}" in message
    assert not stale.exists() and not list(checkpoints.glob("*.partial"))  # written beside, renamed
    state = torch.load(last, map_location="cpu", weights_only=True)
    epoch = state["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"]
    assert epoch >= 1 and state["state_dict"]

    code, out = run_main(monkeypatch, capsys, "train", config, "--resume", last, "--set", f"train.epochs={epoch + 1}")
    assert code is None or code == 0, out.err[-2000:]
    assert "model saved" in out.out and (tmp_path / "run" / "model" / "model.safetensors").is_file()


KILLED_WRITER = """
import sys, time
from mmfuse.atomic import write_atomic

def write(handle):
    handle.write(b"new" * 1_000_000)
    handle.flush()
    print("writing", flush=True)
    time.sleep(60)

write_atomic(sys.argv[1], write)
"""


def test_kill_9_while_writing_a_checkpoint_leaves_the_old_one_whole(tmp_path):
    target = tmp_path / "run" / "checkpoints" / "last.ckpt"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"old checkpoint")
    scratch = tmp_path / "system-temp"
    scratch.mkdir()
    process = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)], stdout=subprocess.PIPE,
                               text=True, env={**os.environ, "TMPDIR": str(scratch)})
    try:
        assert process.stdout.readline().strip() == "writing"
    finally:
        process.kill()  # SIGKILL mid-write
        process.wait(timeout=30)
    assert target.read_bytes() == b"old checkpoint"  # never a 0-byte or half file
    leftovers = [p for p in target.parent.iterdir() if p != target]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".last.ckpt.")  # beside it, not in the temp folder
    assert not list(scratch.iterdir())

    from mmfuse.atomic import write_atomic

    write_atomic(target, b"new checkpoint")  # the next write cleans up after the killed one
    assert target.read_bytes() == b"new checkpoint" and sorted(target.parent.iterdir()) == [target]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run directory with a real checkpoint and a saved model (one epoch of the tiny encoders)."""
    from mmfuse.predictor import Predictor

    folder = tmp_path_factory.mktemp("trained")
    table = write_shapes_csv(folder)
    config = write_config(folder, table, **{"train.epochs": 1})
    Predictor(str(config)).fit().save(folder / "run" / "model")
    return folder, config


def damaged(source: Path, target: Path, how: str) -> Path:
    if how == "truncated":
        target.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    elif how == "random":
        target.write_bytes(os.urandom(4096))
    return target  # "missing": never written


@pytest.mark.parametrize("how", ["truncated", "random", "missing"])
def test_resume_from_a_damaged_checkpoint_is_one_line_naming_it(trained, how, tmp_path, monkeypatch, capsys):
    folder, config = trained
    checkpoint = damaged(folder / "run" / "checkpoints" / "last.ckpt", tmp_path / "last.ckpt", how)
    code, out = run_main(monkeypatch, capsys, "train", config, "--resume", checkpoint)
    assert code == 2 and str(checkpoint) in one_line_error(out.err)


def test_resume_from_another_models_checkpoint_is_one_line(trained, tmp_path, monkeypatch, capsys):
    """`--resume` with a checkpoint of another fusion ended in torch's optimizer ValueError."""
    folder, config = trained
    checkpoint = folder / "run" / "checkpoints" / "last.ckpt"
    code, out = run_main(monkeypatch, capsys, "train", config, "--set", "fusion.name=late",
                         "--output", tmp_path / "other", "--resume", checkpoint)
    error = one_line_error(out.err)
    assert code == 2 and str(checkpoint) in error and "another model" in error


@pytest.mark.parametrize("name,how", [("model.safetensors", "truncated"), ("model.safetensors", "random"),
                                      ("labels.json", "truncated"), ("labels.json", "random")])
def test_a_damaged_model_file_is_one_line_naming_it(trained, name, how, tmp_path, monkeypatch, capsys):
    folder, _ = trained
    model = shutil.copytree(folder / "run" / "model", tmp_path / "model")
    damaged(folder / "run" / "model" / name, model / name, how)
    code, out = run_main(monkeypatch, capsys, "predict", model, "--text", "what color is the square?")
    assert code == 2 and str(model / name) in one_line_error(out.err)


def test_labels_that_do_not_fit_the_weights_are_one_line(trained, tmp_path, monkeypatch, capsys):
    folder, _ = trained
    model = shutil.copytree(folder / "run" / "model", tmp_path / "model")
    (model / "labels.json").write_text(json.dumps(["only", "two"]))
    code, out = run_main(monkeypatch, capsys, "predict", model, "--text", "what color is the square?")
    assert code == 2 and "model.safetensors does not fit" in one_line_error(out.err)


# ----- 7. a label only in the validation or test split ---------------------------------------

def test_a_label_only_in_val_or_test_counts_as_an_error(tmp_path, caplog):
    from mmfuse.predictor import Predictor

    table = pd.read_csv(write_shapes_csv(tmp_path))
    table["split"] = ["val" if i % 5 == 0 else "test" if i % 5 == 1 else "train" for i in range(len(table))]
    triangles = table[table["split"] != "train"].head(6).index
    table.loc[triangles, "answer"] = "triangle"
    table.to_csv(tmp_path / "table.csv", index=False)
    config = tiny_config(tmp_path, tmp_path / "table.csv", **{"data.columns.split": "split", "train.epochs": 1})
    predictor = Predictor(config).fit()  # raised KeyError: 'triangle' before
    assert "triangle" not in predictor.labels
    assert any("never saw in training" in r.message and "'triangle'" in r.message for r in caplog.records)

    test = predictor._test_frame
    unseen = int((test["label"] == "triangle").sum())
    assert unseen > 0
    result = predictor.evaluate(test, report_dir=tmp_path / "report")
    assert result["metrics"]["accuracy"] <= (len(test) - unseen) / len(test) + 1e-6
    assert result["per_class"][-1]["label"] == "(not in training)" and result["per_class"][-1]["support"] == unseen
    assert result["per_class"][-1]["recall"] == 0.0
    # `mmfuse evaluate --split test` reads the split again: the same rows, not fewer bad-row-free ones.
    assert len(predictor.splits()["test"]) == len(test)


def test_unseen_labels_are_wrong_even_when_everything_else_is_right():
    from mmfuse.tasks import create_task

    task = create_task("classification")
    target = task.encode(["a", "b", "triangle", "a"], ["a", "b"])
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])
    metrics, per_class, confusion = task.metrics(scores, target, ["a", "b"])
    assert metrics["accuracy"] == pytest.approx(0.75)
    assert confusion.shape == (3, 3) and confusion[2, 0] == 1


# ----- 8. undecodable, hostile and very wide tables; 5b. NUL bytes in paths ---------------------

@pytest.fixture
def shapes_config(tmp_path):
    return write_config(tmp_path, tmp_path / "table.csv")


def test_a_csv_with_one_invalid_utf8_byte_is_one_bad_row(tmp_path, shapes_config, monkeypatch, capsys):
    table = write_shapes_csv(tmp_path)
    lines = table.read_bytes().split(b"\n")
    lines[4] = lines[4].replace(b"square", b"squ\xffare")  # data row 4
    table.write_bytes(b"\n".join(lines))
    offset = table.read_bytes().index(b"\xff")
    code, out = run_main(monkeypatch, capsys, "data", "check", table, "--config", shapes_config)
    assert code is None or code == 0
    assert "72 rows read, 71 good, 1 bad" in out.out
    assert (f"table.csv row 4: invalid UTF-8 in column 'question': byte 0xff at line 5, byte offset {offset}"
            in out.out)
    code, out = run_main(monkeypatch, capsys, "data", "check", table, "--config", shapes_config, "--strict")
    assert code == 2
    code, out = run_main(monkeypatch, capsys, "train", shapes_config, "--strict")
    assert code == 2 and "table.csv row 4: invalid UTF-8" in out.err


def test_paths_outside_the_tables_folder_are_refused_when_confined(tmp_path):
    table = write_shapes_csv(tmp_path / "data")
    outside = tmp_path / "secret.png"
    shutil.copy(tmp_path / "data" / "images" / "img0.png", outside)
    (tmp_path / "data" / "images" / "link.png").symlink_to(outside)
    frame = pd.read_csv(table)
    frame.loc[0, "image"] = "../secret.png"
    frame.loc[1, "image"] = "images/link.png"
    frame.loc[2, "image"] = str(outside)
    frame.to_csv(table, index=False)
    columns = {"image": "image", "text": "question", "label": "answer"}

    def bad_rows(confine: bool) -> dict[int, str]:
        manifest = load_manifest(table, DataConfig(columns=columns, confine_paths=confine),
                                 task="classification", modalities=["image", "text"])
        return {b.row: b.reason for b in manifest.bad_rows}

    assert bad_rows(False) == {}  # the default follows them: your own tables may point anywhere
    refused = bad_rows(True)
    assert sorted(refused) == [1, 2, 3]
    assert all(r.startswith("path outside the table's folder") for r in refused.values())


def test_a_nul_byte_in_an_image_path_is_one_bad_row(tmp_path, shapes_config, monkeypatch, capsys):
    table = write_shapes_csv(tmp_path)
    data = table.read_bytes().replace(b"images/img3.png", b"images/img3\0.png", 1)
    table.write_bytes(data)
    code, out = run_main(monkeypatch, capsys, "data", "check", table, "--config", shapes_config)
    assert code is None or code == 0
    assert "1 bad" in out.out and "image column 'image': the path contains a NUL byte" in out.out


def wide_csv(path: Path, columns: int) -> Path:
    names = ["image", "question", "answer"] + [f"c{i}" for i in range(columns)]
    row = ["images/img0.png", "what color is the square?", "red"] + ["x"] * columns
    path.write_text(",".join(names) + "\n" + (",".join(row) + "\n") * 2)
    return path


def test_a_very_wide_table_reads_only_the_bound_columns(tmp_path):
    write_shapes_csv(tmp_path)
    path = wide_csv(tmp_path / "wide.csv", 200_000)
    columns = {"image": "image", "text": "question", "label": "answer"}
    start = time.perf_counter()
    manifest = load_manifest(path, DataConfig(columns=columns), task="classification", modalities=["image", "text"])
    assert time.perf_counter() - start < 3.0  # 0.5 s here; reading every column took 11 s
    assert len(manifest.frame) == 2 and not manifest.bad_rows

    with pytest.raises(DataError) as error:
        load_manifest(path, DataConfig(columns={**columns, "text": "prompt"}), task="classification",
                      modalities=["image", "text"])
    message = str(error.value)
    assert "column 'prompt' (data.columns.text) not found" in message and "200003 columns" in message
    assert "'image', 'question', 'answer'" in message and len(message) < 600


def test_resuming_mid_epoch_logs_the_epoch_without_a_traceback(caplog):
    """Ctrl-C mid-epoch, then --resume: Lightning continues that epoch without calling
    on_train_epoch_start, and the epoch line raised AttributeError ('no attribute start')."""
    from types import SimpleNamespace

    from mmfuse.train import EpochSummary

    summary = EpochSummary()
    trainer = SimpleNamespace(callback_metrics={"train_loss": torch.tensor(0.5)}, current_epoch=0, max_epochs=2,
                              is_global_zero=True)
    module = SimpleNamespace(monitor="val_acc")
    summary.on_train_start(trainer, module)  # the hooks of a resumed run, in Lightning's order
    with caplog.at_level("INFO", logger="mmfuse.train"):
        summary.on_train_epoch_end(trainer, module)
    assert "epoch 1/2  train_loss 0.5000" in caplog.text
