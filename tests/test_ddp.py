"""DDP training: a real 2-process run on CPU (gloo), as `mmfuse train --set train.devices=2` runs it.

Lightning's `ddp` strategy starts the second process by running the command line again, so the
run is a script of its own in a subprocess (inside pytest it would run pytest again).
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch.distributed as dist

from conftest import tiny_config, write_shapes_csv
from mmfuse.predictor import Predictor

# Never skipped on Linux: there a missing gloo backend is a failure.
pytestmark = pytest.mark.skipif(sys.platform != "linux" and not (dist.is_available() and dist.is_gloo_available()),
                                reason="this platform cannot run torch.distributed with gloo")

SCRIPT = """
import json, sys
from pathlib import Path
import lightning as L
sys.path.insert(0, {tests!r})
from mmfuse.predictor import Predictor

class Record(L.Callback):
    '''What this process trained on in epoch 0 and validated on in the last epoch.'''
    def __init__(self):
        self.train_rows, self.val_rows = [], []
    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.current_epoch == 0:
            self.train_rows += batch.rows.tolist()
    def on_validation_epoch_start(self, trainer, module):
        self.val_rows = []
    def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
        self.val_rows += batch.rows.tolist()
    def on_train_end(self, trainer, module):
        out = Path({out!r}) / f"rank{{trainer.global_rank}}.json"
        out.write_text(json.dumps({{"world": trainer.world_size, "train_rows": self.train_rows,
                                    "val_rows": self.val_rows, "val_acc": float(trainer.callback_metrics["val_acc"])}}))

predictor = Predictor(json.loads({config!r})).fit(callbacks=[Record()])
predictor.save({model!r})  # rank 0 only writes
"""


def test_two_process_gloo_ddp_trains_on_disjoint_halves_and_syncs_the_metric(tmp_path: Path):
    config = tiny_config(tmp_path, write_shapes_csv(tmp_path), **{
        "train.accelerator": "cpu", "train.devices": 2, "train.epochs": 2, "train.keep": "last"})
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent), out=str(tmp_path), config=json.dumps(config),
                                    model=str(tmp_path / "model")))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]  # both processes took part
    splits = Predictor(config).splits()
    # Each process trained on its own half of the training rows; together on all of them.
    first, second = (set(r["train_rows"]) for r in ranks)
    assert first and second and not first & second
    assert first | second == set(range(len(splits["train"])))
    assert abs(len(first) - len(second)) < len(splits["train"]) / 4
    # Each validated its own rows, yet both report the metric of the whole split (torchmetrics sync)...
    assert sorted(ranks[0]["val_rows"] + ranks[1]["val_rows"]) == list(range(len(splits["val"])))
    assert ranks[0]["val_acc"] == ranks[1]["val_acc"]
    # ... which one process finds with the saved (last-epoch) model.
    model = Predictor.load(tmp_path / "model")
    assert model.fit_summary["processes"] == 2
    whole = model.evaluate(splits["val"])["metrics"]["accuracy"]
    assert ranks[0]["val_acc"] == pytest.approx(whole, abs=1e-6)
    assert len(model.predict(splits["test"])) == len(splits["test"])


def test_one_device_still_trains_in_this_process(tmp_path: Path):
    config = tiny_config(tmp_path, write_shapes_csv(tmp_path), **{"train.accelerator": "cpu", "train.devices": 1})
    predictor = Predictor(config).fit()
    assert predictor.fit_summary["processes"] == 1 and predictor.fit_summary["rank"] == 0
    saved = predictor.save(tmp_path / "model")
    assert len(Predictor.load(saved).predict(predictor.splits()["test"])) > 0
