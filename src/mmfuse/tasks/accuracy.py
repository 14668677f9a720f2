"""Validation accuracy as a torchmetrics Metric (summed over DDP processes) that counts a row whose
label the model never saw in training (target UNSEEN) wrong: torchmetrics' accuracy would either
refuse that target or, with ignore_index, leave the row out and report a higher accuracy.

Its own module so that torchmetrics loads only when a model trains, and the class pickles.
"""
from __future__ import annotations

from torch import Tensor
from torchmetrics import MeanMetric


class RowAccuracy(MeanMetric):
    def update(self, scores: Tensor, target: Tensor) -> None:
        super().update((scores.argmax(-1) == target).float())
