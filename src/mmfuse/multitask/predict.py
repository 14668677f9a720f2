"""Predictions of a saved multi-task model: one column per task (its answer) and its score."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from ..config import ColumnsConfig
from ..data.manifest import BadRow, load_manifest
from ..inference import predict_outputs
from ..tasks import create_task
from .artifact import load_multitask
from .run import task_dataset

log = logging.getLogger(__name__)


class MultiTaskPredictor:
    """A loaded multi-task model: `predict(table)` -> the good rows with every task's answer."""

    def __init__(self, directory: str | Path):
        self.model, self.config, self.labels = load_multitask(directory)
        self.bad_rows: list[BadRow] = []

    def predict(self, data: Any) -> pd.DataFrame:
        """`data`: a table path or DataFrame with the model's input columns (labels not needed)."""
        # The label column is read if there (require_label=False: absent is fine), never used.
        bound = self.config.data.columns.model_dump() | {"split": None}
        data_config = self.config.data.model_copy(update={"columns": ColumnsConfig(**bound)})
        manifest = load_manifest(data, data_config, task="classification", modalities=self.config.modalities(),
                                 require_label=False, rebind=True)
        self.bad_rows.extend(manifest.bad_rows)
        if manifest.bad_rows:
            log.warning("%s", manifest.summary())
        frame = manifest.frame
        result = frame[["row", *(m for m in self.config.modalities() if m in frame)]].copy()
        if frame.empty:
            return result
        outputs = predict_outputs(self.model, task_dataset(frame, self.model, self.config, self.labels), self.config)
        for spec in self.config.multitask.tasks:
            task, head = create_task(spec.type), self.model.heads[spec.name]
            answers = task.answers(head.scores(outputs[spec.name]), self.labels[spec.name], 1)
            result[spec.name] = [answer for answer, _ in answers]
            if task.per_label:
                result[f"{spec.name}_score"] = [top[0][1] if top else None for _, top in answers]
        return result
