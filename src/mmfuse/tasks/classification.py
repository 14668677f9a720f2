"""Classification: one label per row, softmax over the label set, cross-entropy."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import LabelProblem
from .base import Task, label_positions, label_text, register_task

# The target of a row whose label the model never saw in training (a label only in the val or test
# split). No output stands for it, so it is never predicted right: accuracy counts it wrong, the
# loss skips it (cross-entropy's default ignore_index), and the metrics give it a class of its own.
UNSEEN = -100
UNSEEN_LABEL = "(not in training)"


@register_task("classification")
class Classification(Task):
    name = "classification"
    explainable = True
    monitor, monitor_mode = "val_acc", "max"
    headline, headline_mode = "accuracy", "max"

    def parse_label(self, value: Any, allowed: set[str] | None, separator: str) -> str:
        if isinstance(value, (list, tuple, np.ndarray)):
            raise LabelProblem(f"expected one label, got a list: {list(value)!r}")
        label = label_text(value)
        if not label:
            raise LabelProblem("missing label")
        if allowed is not None and label not in allowed:
            raise LabelProblem(f"label not in the label set: {label!r}")
        return label

    def encode(self, values: list[Any], labels: list[str]) -> Tensor:
        position = label_positions([[v] for v in values], labels, "they count as errors")
        return torch.tensor([position.get(v, UNSEEN) for v in values], dtype=torch.long)

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output, target)

    def scores(self, output: Tensor) -> Tensor:
        return output.softmax(-1)

    def decide(self, scores: Tensor, labels: list[str]) -> str:
        return labels[int(scores.argmax())]

    def metrics(self, scores: Tensor, target: Tensor, labels: list[str]) -> tuple[dict, list[dict], Tensor]:
        from torchmetrics.functional import classification as C

        unseen = target == UNSEEN
        if unseen.any():
            # Rows whose label the model never saw in training: a class of their own that it never
            # predicts (score 0), so each one counts as an error, in the confusion matrix too.
            scores = torch.cat([scores, scores.new_zeros(len(scores), 1)], dim=1)
            target = torch.where(unseen, len(labels), target)
            labels = [*labels, UNSEEN_LABEL]
        n = len(labels)
        common = {"num_classes": n}
        metrics = {
            "accuracy": C.multiclass_accuracy(scores, target, average="micro", **common).item(),
            "macro_f1": C.multiclass_f1_score(scores, target, average="macro", **common).item(),
            "micro_f1": C.multiclass_f1_score(scores, target, average="micro", **common).item(),
            "macro_precision": C.multiclass_precision(scores, target, average="macro", **common).item(),
            "macro_recall": C.multiclass_recall(scores, target, average="macro", **common).item(),
        }
        support = torch.bincount(target, minlength=n)
        metrics["auroc"] = _auroc(scores, target, support)
        precision = C.multiclass_precision(scores, target, average=None, **common)
        recall = C.multiclass_recall(scores, target, average=None, **common)
        f1 = C.multiclass_f1_score(scores, target, average=None, **common)
        per_class = [{"label": labels[i], "precision": precision[i].item(), "recall": recall[i].item(),
                      "f1": f1[i].item(), "support": int(support[i])} for i in range(n)]
        confusion = C.multiclass_confusion_matrix(scores, target, **common)
        return metrics, per_class, confusion

    def val_metric(self, num_labels: int):
        from .accuracy import RowAccuracy

        return RowAccuracy()


def _auroc(scores: Tensor, target: Tensor, support: Tensor) -> float:
    """One-vs-rest AUROC, NaN (printed "undefined") when a class is absent from the split.

    A class without rows has no ROC curve; torchmetrics scores it 0 and averages that in, which
    printed 0.0000 (or 0.92 beside an accuracy of 1.0) for a split that lacks one class.
    """
    from torchmetrics.functional import classification as C

    n = len(support)
    if bool((support == 0).any()):
        return float("nan")
    if n == 2:
        return C.binary_auroc(scores[:, 1], target).item()
    return C.multiclass_auroc(scores, target, num_classes=n, average="macro").item()
