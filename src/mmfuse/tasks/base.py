"""The Task interface and its registry: everything that depends on what is predicted.

A task owns the path from a table's label column to a trained model's answer: how a label cell
is checked, how labels become a target tensor, the head's output size, the loss, the scores
(probabilities or values), the user-facing prediction, the metrics and the one that picks the
best checkpoint. The rest of mmfuse (manifest, dataset, model, training, evaluation, predictor,
server) asks the task object instead of branching on the task name, so a new task (captioning,
several tasks on one model) is a new file registered here, not edits in every module.

A task holds no data: the label vocabulary (`labels`) is passed in, as the Predictor keeps it.
torchmetrics is imported only when metrics are computed: predicting never loads it.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import pandas as pd

from ..registry import Registry

if TYPE_CHECKING:
    from torch import Tensor, nn
    from torchmetrics import Metric

log = logging.getLogger(__name__)

# One prediction: the user-facing value (a label, "a|b" tags, a number) and the top-k (label, score).
Answer = tuple[Any, list[tuple[str, float]]]


def label_text(value: Any) -> str:
    # A label read from JSON / Parquet may be a number; an integer-valued float (a column that
    # became float because of one missing cell) must still read "3", not "3.0".
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    return str(value).strip()


def label_positions(tags: list[list[str]], labels: list[str], consequence: str) -> dict[str, int]:
    """label -> output index; warns once about rows whose labels the model never saw in training."""
    position = {label: i for i, label in enumerate(labels)}
    unseen = [[t for t in row if t not in position] for row in tags]
    if any(unseen):
        counts = Counter(t for row in unseen for t in row)
        log.warning("%d row(s) with labels the model never saw in training (%s): %s", sum(map(bool, unseen)),
                    ", ".join(f"{label!r} ×{n}" for label, n in counts.most_common(10)), consequence)
    return position


class Task:
    """Base class. Subclasses set the class attributes and implement the methods that raise."""

    name: str
    # Whether the model scores each label of a vocabulary learned from the training rows
    # (False: it outputs a value, and there is no label set).
    per_label: bool = True
    # Whether mmfuse.explain can explain a prediction (it explains one predicted class).
    explainable: bool = False
    # Logged on the validation split each epoch; picks the best checkpoint and stops early.
    monitor: str
    monitor_mode: str  # "max" or "min"
    # The evaluation metric reports, robustness curves and comparisons lead with.
    headline: str
    headline_mode: str  # "max" or "min"
    # A task that trains its own kind of model (a caption decoder, several heads) names the
    # function that does it, "module:function(config, *, resume, echo)"; None: the Predictor
    # trains a fusion model with this task's head.
    runner: str | None = None
    # The config section only this task reads (caption, multitask): refused under another task.
    section: str | None = None

    def check_config(self, config: Any) -> None:
        """Checks of a config with this task, before any data is read (a ConfigError if wrong)."""

    # ----- labels --------------------------------------------------------------------------
    def parse_label(self, value: Any, allowed: set[str] | None, separator: str) -> Any:
        """One label cell (not missing) -> the manifest's value, or errors.LabelProblem. `allowed`: the label set, if fixed."""
        raise NotImplementedError

    def label_column(self, values: list[Any], require_label: bool) -> pd.Series:
        """The manifest's label column from parsed values (None where a prediction table lacks one)."""
        return pd.Series(values, dtype="object")

    def label_set(self, values: Iterable[Any]) -> list[str]:
        """The label vocabulary of the training rows' parsed labels ([] without one)."""
        return sorted(set(values))

    def encode(self, values: list[Any], labels: list[str]) -> Tensor:
        """Parsed labels -> the target tensor the loss and metrics read."""
        raise NotImplementedError

    # ----- model ---------------------------------------------------------------------------
    def out_dim(self, num_labels: int) -> int:
        return num_labels

    def head(self, *, in_dim: int, num_labels: int, hidden: int, dropout: float) -> nn.Module:
        """The module on the fused vector; it keeps a reference to this task for loss and scores."""
        from ..heads import TaskHead

        return TaskHead(in_dim=in_dim, out_dim=self.out_dim(num_labels), task=self, hidden=hidden, dropout=dropout)

    def shape(self, output: Tensor) -> Tensor:
        """The head's raw (B, out_dim) output as this task's output."""
        return output

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def scores(self, output: Tensor) -> Tensor:
        """Outputs -> what a user reads: probabilities per label, or the value."""
        raise NotImplementedError

    # ----- answers -------------------------------------------------------------------------
    def decide(self, scores: Tensor, labels: list[str]) -> Any:
        """One row's scores -> its prediction."""
        raise NotImplementedError

    def answers(self, scores: Tensor, labels: list[str], top_k: int) -> list[Answer]:
        """(B, ...) scores -> per row (prediction, top-k (label, score)); the predictor and the
        server both format their answers from this."""
        k = min(top_k, len(labels))
        top = scores.topk(k, dim=-1) if k else None
        return [(self.decide(row, labels),
                 [] if top is None else [(labels[i], s) for i, s in zip(top.indices[n].tolist(), top.values[n].tolist())])
                for n, row in enumerate(scores)]

    # ----- metrics -------------------------------------------------------------------------
    def metrics(self, scores: Tensor, target: Tensor, labels: list[str]) -> tuple[dict, list[dict], Tensor | None]:
        """(metrics by name, per-label rows, confusion matrix or None) over a whole split."""
        raise NotImplementedError

    def val_metric(self, num_labels: int) -> Metric:
        """A torchmetrics Metric for `monitor`: update(scores, target) per batch; its state is
        summed over processes, so the value is that of the whole split under DDP too."""
        raise NotImplementedError


TASKS: Registry[Task] = Registry("task")
register_task = TASKS.register


def create_task(name: str) -> Task:
    return TASKS.create(name)


def task_runner(task: Task):
    """The function a task with its own training (Task.runner) trains with; None for the others."""
    if task.runner is None:
        return None
    import importlib

    module, function = task.runner.split(":")
    return getattr(importlib.import_module(module), function)


def available_tasks() -> list[str]:
    return TASKS.names()
