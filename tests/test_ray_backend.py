"""`--backend ray`: a tiny local Ray round trip (num_cpus=2), started once for the module.

Features from Ray Data equal the in-process ones, compare cells run as Ray tasks give the cells
of a local run, tune trials as Ray tasks write the study and resume it, and failures come back as
one line naming the cell or trial."""
from __future__ import annotations

import json
import subprocess
import sys

import optuna
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("ray", reason="the ray extra: pip install 'mmfuse[ray]'")

from conftest import tiny_config, write_shapes_csv  # noqa: E402
from mmfuse.backends import BackendCache, open_backend  # noqa: E402
from mmfuse.cli import app  # noqa: E402
from mmfuse.config import parse_config  # noqa: E402
from mmfuse.dataset import loader  # noqa: E402
from mmfuse.encoders.cache import FeatureCache  # noqa: E402
from mmfuse.errors import ConfigError, MmfuseError  # noqa: E402
from mmfuse.model import build_encoders  # noqa: E402

runner = CliRunner()
COSTS = ["train_s", "latency_ms_per_row", "peak_rss_mb", "torch_threads"]  # where a cell ran shows here only


@pytest.fixture(scope="module")
def backend():
    lines = []
    with open_backend("ray", num_cpus=2, echo=lines.append) as started:
        assert "a local Ray started for this command" in lines[-1] and "2 CPUs" in lines[-1]
        yield started


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    write_shapes_csv(folder)
    return folder / "table.csv"


def test_ray_data_features_equal_the_in_process_ones(backend, table, tmp_path, monkeypatch):
    import mmfuse.backends.ray_backend as ray_backend

    config = parse_config(tiny_config(tmp_path, table))
    frame = pd.read_csv(table)
    torch.manual_seed(0)
    encoders = build_encoders(config)

    def not_here(*args):
        raise AssertionError("encoded in the driver, not by Ray Data's actors")

    for modality, column in (("image", "image"), ("text", "question")):
        values = sorted(set(frame[column]))
        if modality == "image":
            values = [str(table.parent / v) for v in values]
        load = loader(modality, config.data)
        local = FeatureCache(tmp_path / "here")
        here = local.features(encoders[modality], values, load, batch_size=2)
        with monkeypatch.context() as patch:  # more than one batch: the actors must do all of it
            patch.setattr(ray_backend, "encode_inputs", not_here)
            cache = BackendCache(tmp_path / "ray", encode=backend.encode)
            there = cache.features(encoders[modality], values, load, batch_size=2)
        [call] = cache.calls
        assert (call["modality"], call["variant"], call["reused"]) == (modality, None, 0)
        assert call["computed"] == local.last_stats["computed"] > 2  # unique contents, more than one batch
        assert torch.equal(here.pooled, there.pooled)
        assert torch.equal(here.tokens, there.tokens) and torch.equal(here.mask, there.mask)
        # Stored through the same cache: a local read finds every entry and computes nothing.
        again = FeatureCache(tmp_path / "ray")
        assert torch.equal(again.features(encoders[modality], values, load).pooled, here.pooled)
        assert again.last_stats["computed"] == 0


def test_compare_on_ray_gives_the_local_cells(backend, table, tmp_path, monkeypatch):
    import mmfuse.compare as compare

    def config(name):
        return parse_config(tiny_config(tmp_path / name, table, **{
            "train.epochs": 1, "compare.robustness_levels": [0.5],
            "compare.set": {"encoders.image.trainable": False, "head.hidden": 12}}))

    lines = []
    remote = compare.run_comparison(config("ray"), ["concat", "late"], 1, None, tmp_path / "ray_out",
                                    echo=lines.append, backend=backend)
    assert "2 cells sent to Ray, 1 CPU each: up to 2 at once" in lines
    # The local side in this process (run_cell itself; tests/test_compare.py runs the real children).
    monkeypatch.setattr(compare, "launch_cell", lambda cell_dir, context: compare.run_cell(cell_dir) and 0)
    local = compare.run_comparison(config("local"), ["concat", "late"], 1, None, tmp_path / "local_out",
                                   echo=lambda _: None)
    same = [c for c in local.columns if c not in COSTS]
    assert {"metric", "accuracy", "without_image", "robust_image"} <= set(same)
    pd.testing.assert_frame_equal(local[same], remote[same], check_exact=True)
    assert (tmp_path / "ray_out" / "comparison.md").is_file()
    assert json.loads((tmp_path / "ray_out" / "cells" / "late-s0" / "cell.json").read_text())["torch_threads"] == 1


def test_a_failing_cell_on_ray_names_itself_and_keeps_its_log(backend, tmp_path):
    broken = tmp_path / "cells" / "concat-s0"
    broken.mkdir(parents=True)  # no spec.json: run_cell fails in the child
    assert list(backend.run_cells([broken], echo=lambda _: None)) == [(broken, "exit code 1")]
    assert "spec.json" in (broken / "log.txt").read_text()


SPACE = {"train.lr": {"low": 1.0e-3, "high": 1.0e-1, "log": True}, "fusion.name": {"choices": ["concat", "late"]},
         "head.hidden": {"low": 8, "high": 16, "step": 8}}


def test_tune_trials_on_ray_write_the_study_and_resume(backend, table, tmp_path):
    from mmfuse.tune import run_tune

    config = parse_config(tiny_config(tmp_path, table, **{"train.epochs": 1, "tune.space": SPACE}))
    lines = []
    first = run_tune(config, 3, echo=lines.append, backend=backend)
    storage = f"sqlite:///{tmp_path / 'run' / 'tune' / 'study.db'}"
    trials = optuna.load_study(study_name="mmfuse", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert trials[0].params == {"train.lr": 0.01, "fusion.name": "concat", "head.hidden": 16}  # the config's own
    assert len({tuple(t.params.values()) for t in trials}) == 3  # samplers seeded apart
    assert sorted(line.split(":")[0] for line in lines) == ["trial 0", "trial 1", "trial 2"]
    assert first["best_config"].is_file() and first["report"].is_file()

    lines = []
    again = run_tune(config, 4, echo=lines.append, backend=backend)
    assert lines[0].endswith("3 trial(s) finished, 1 to run") and lines[1].startswith("trial 3: complete")
    resumed = optuna.load_study(study_name="mmfuse", storage=storage).trials
    assert [t.params for t in resumed[:3]] == [t.params for t in trials] and len(resumed) == 4
    assert resumed[3].params not in [t.params for t in trials]  # a seed no earlier task had
    assert len(again["trials"]) == 4


def test_a_failing_trial_on_ray_is_one_line_naming_it(backend, table, tmp_path):
    from mmfuse.tune import run_tune

    # A strategy Lightning does not know: every trial fails inside its Ray task, at Trainer creation.
    config = parse_config(tiny_config(tmp_path, table, **{"train.epochs": 1,
                                                          "tune.space": {"train.strategy": {"choices": ["nope"]}}}))
    expected = (r"^trial 0 failed on Ray: ValueError: .*strategy='nope'.*"
                r"\(2 trial\(s\) failed; run the same command again")
    with pytest.raises(MmfuseError, match=expected) as caught:
        run_tune(config, 2, echo=lambda _: None, backend=backend)
    assert "\n" not in str(caught.value) and "Traceback" not in str(caught.value)


def test_data_features_command_on_ray(backend, table, tmp_path):
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp_path, table, **{"encoders.image.trainable": False})))
    first = runner.invoke(app, ["data", "features", str(path), "--backend", "ray"])
    assert first.exit_code == 0, first.output
    assert "backend: the Ray this process already runs" in first.output
    assert "image: 33 computed, 0 reused from the cache" in first.output  # 36 images, 33 unique contents
    again = runner.invoke(app, ["data", "features", str(path)])  # local: everything is in the cache
    assert again.exit_code == 0 and "image: 0 computed, 33 reused from the cache" in again.output


def test_backend_options_fail_before_any_work(backend, table, tmp_path, monkeypatch):
    from mmfuse.compare import run_comparison

    ddp = parse_config(tiny_config(tmp_path, table, **{"train.devices": 2}))
    with pytest.raises(ConfigError, match="train.devices must be 1 or auto and train.num_nodes 1 .got 2 and 1"):
        run_comparison(ddp, ["concat"], 1, None, tmp_path / "out", echo=lambda _: None, backend=backend)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="--backend 'spark': expected one of local, ray"):
        with open_backend("spark"):
            pass
    with pytest.raises(ConfigError, match="--address is an option of --backend ray"):
        with open_backend("local", address="ray://head:10001"):
            pass
    # Without Ray installed: one line naming the extra.
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.delitem(sys.modules, "mmfuse.backends.ray_backend")
    with pytest.raises(MmfuseError, match=r"^--backend ray needs Ray: pip install 'mmfuse\[ray\]'$"):
        with open_backend("ray"):
            pass


def test_mmfuse_imports_no_ray_and_the_ray_backend_no_pytorch_lightning():
    code = ("import sys, mmfuse, mmfuse.cli, mmfuse.compare, mmfuse.backends; assert 'ray' not in sys.modules; "
            "import mmfuse.backends.ray_backend; "
            "assert 'pytorch_lightning' not in sys.modules, 'pytorch_lightning imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_small_dev_shm_is_said_clearly():
    from mmfuse.backends.ray_backend import MB, object_store_bytes, shm_note

    assert object_store_bytes(None) == 1024 * MB and object_store_bytes(24 * 1024 * MB) == 1024 * MB
    small = object_store_bytes(64 * MB)
    assert small == 128 * MB  # Ray's floor; more than /dev/shm holds, so Ray puts it in /tmp
    note = shm_note(64 * MB, small)
    assert "/dev/shm has only 64 MB free" in note and "goes to /tmp" in note and "--shm-size" in note
    assert shm_note(24 * 1024 * MB, 1024 * MB) is None


def test_an_address_where_nothing_answers_fails_at_once_naming_it(table, tmp_path):
    """Without the check, ray.init waits minutes for a head node that is not there."""
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps(tiny_config(tmp_path, table)))
    done = subprocess.run([sys.executable, "-m", "mmfuse.cli", "data", "features", str(config), "--backend", "ray",
                           "--address", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert f"127.0.0.1:{port}" in last and "nothing answers" in last and "Traceback" not in done.stderr
