"""Regression: one number per row, the head's single output, mean squared error."""
from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import LabelProblem
from .base import Answer, Task, register_task


@register_task("regression")
class Regression(Task):
    name = "regression"
    per_label = False
    monitor, monitor_mode = "val_mse", "min"
    headline, headline_mode = "rmse", "min"

    def parse_label(self, value: Any, allowed: set[str] | None, separator: str) -> float:
        if isinstance(value, (list, tuple, np.ndarray)):
            raise LabelProblem(f"non-numeric regression target: {value!r}")
        try:
            number = float(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            if isinstance(value, str) and not value.strip():
                raise LabelProblem("missing label") from None
            raise LabelProblem(f"non-numeric regression target: {value!r}") from None
        if not math.isfinite(number):
            raise LabelProblem(f"non-finite regression target: {value!r}")
        return number

    def label_column(self, values: list[Any], require_label: bool) -> pd.Series:
        # A prediction table may lack some values (None): those stay objects, not NaN.
        return pd.Series(values, dtype="float64" if require_label else "object")

    def label_set(self, values: Iterable[Any]) -> list[str]:
        return []

    def encode(self, values: list[float], labels: list[str]) -> Tensor:
        return torch.tensor(np.asarray(values, dtype=float), dtype=torch.float32)

    def out_dim(self, num_labels: int) -> int:
        return 1

    def shape(self, output: Tensor) -> Tensor:
        return output.squeeze(-1)

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(output, target.float())

    def scores(self, output: Tensor) -> Tensor:
        return output

    def answers(self, scores: Tensor, labels: list[str], top_k: int) -> list[Answer]:
        return [(value, []) for value in scores.reshape(-1).tolist()]

    def metrics(self, scores: Tensor, target: Tensor, labels: list[str]) -> tuple[dict, list, None]:
        from torchmetrics.functional import regression as R

        return {"rmse": R.mean_squared_error(scores, target, squared=False).item(),
                "mae": R.mean_absolute_error(scores, target).item(),
                "r2": R.r2_score(scores, target).item() if len(target) > 1 else float("nan")}, [], None

    def val_metric(self, num_labels: int):
        from torchmetrics import MeanSquaredError

        return MeanSquaredError()
