"""Each task's labels for a split: read from its own column by the manifest's rows, parsed by the
task, encoded to a target; an empty cell leaves the row unknown for that task (no loss, no metric)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from ..config import DataConfig, TaskSpec
from ..data.source_column import source_columns
from ..errors import DataError, LabelProblem
from ..modalities.base import is_missing
from ..tasks import Task, create_task

log = logging.getLogger(__name__)


@dataclass
class TaskLabels:
    """One task's parsed labels over a split's rows (None: unknown)."""

    spec: TaskSpec
    values: list[Any]

    @property
    def task(self) -> Task:
        return create_task(self.spec.type)

    def known(self) -> Tensor:
        return torch.tensor([v is not None for v in self.values], dtype=torch.bool)

    def encode(self, labels: list[str]) -> Tensor:
        """The target tensor: the known rows' targets, zeros where unknown (`known` masks them out)."""
        task, known = self.task, self.known()
        values = [v for v in self.values if v is not None]
        # A stand-in value gives the target's shape and type when no row of this split is known.
        encoded = task.encode(values or [task.parse_label(labels[0] if labels else "0", None, "|")], labels)
        target = encoded.new_zeros((len(self.values), *encoded.shape[1:]))
        if values:
            target[known] = encoded
        return target


def read_task_labels(source: Any, frame: pd.DataFrame, specs: list[TaskSpec], data: DataConfig) -> dict[str, TaskLabels]:
    """Every task's labels for the manifest `frame` (good rows of `source`). A cell a task cannot
    read (a list where one label is expected, a word where a number is) is counted and left
    unknown; under data.strict the first one fails the run, naming its table, row and column."""
    name = source if isinstance(source, (str, Path)) else "DataFrame"
    columns = source_columns(source, [spec.column for spec in specs], frame["row"],
                             {spec.column: f"multitask.tasks {spec.name!r} column" for spec in specs})
    result = {}
    for spec in specs:
        task = create_task(spec.type)
        values, problems = [], []
        for row, cell in zip(frame["row"], columns[spec.column]):
            if is_missing(cell) or (isinstance(cell, str) and not cell.strip()):
                values.append(None)
                continue
            try:
                values.append(task.parse_label(cell, None, data.label_separator))
            except LabelProblem as problem:
                if data.strict:
                    raise DataError(f"{name} row {row}, column {spec.column!r} (task {spec.name}): {problem}") from None
                problems.append(f"row {row}: {problem}")
                values.append(None)
        if problems:
            log.warning("task %s: %d cell(s) of %s column %r not readable, left unknown (data.strict fails "
                        "instead); first: %s", spec.name, len(problems), name, spec.column, "; ".join(problems[:3]))
        result[spec.name] = TaskLabels(spec, values)
    return result


class TaskTargets:
    """What TableDataset keeps as `target` for a multi-task model: indexed by a batch's rows, it
    gives {task: (target, known)}."""

    def __init__(self, targets: dict[str, tuple[Tensor, Tensor]]):
        self.targets = targets

    def __getitem__(self, rows: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        return {name: (target[rows], known[rows]) for name, (target, known) in self.targets.items()}
