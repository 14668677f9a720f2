"""Multi-label: any number of tags per row, one sigmoid per tag, binary cross-entropy."""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import LabelProblem, quote_list
from ..modalities.base import is_missing
from .base import Task, label_positions, label_text, register_task

THRESHOLD = 0.5  # a tag is predicted when its probability is above this
JOIN = "|"  # predicted tags in one cell


@register_task("multilabel")
class Multilabel(Task):
    name = "multilabel"
    monitor, monitor_mode = "val_f1", "max"
    headline, headline_mode = "micro_f1", "max"

    def parse_label(self, value: Any, allowed: set[str] | None, separator: str) -> list[str]:
        if isinstance(value, (list, tuple, np.ndarray)):  # JSON / Parquet lists need no splitting
            items = [label_text(v) for v in value if not is_missing(v)]
        else:
            items = [label_text(v) for v in str(value).split(separator)]
        items = list(dict.fromkeys(v for v in items if v))  # drop blanks and repeats, keep order
        if not items:
            raise LabelProblem("missing label")
        unknown = [v for v in items if allowed is not None and v not in allowed]
        if unknown:
            raise LabelProblem(f"label not in the label set: {quote_list(unknown)}")
        return items

    def label_set(self, values: Iterable[list[str]]) -> list[str]:
        return sorted({tag for tags in values for tag in tags})

    def encode(self, values: list[list[str]], labels: list[str]) -> Tensor:
        # An unseen tag has no output: the row keeps its other tags (the unseen one cannot be scored).
        position = label_positions(values, labels, "those tags are left out of their targets")
        target = torch.zeros(len(values), len(labels))
        for row, tags in enumerate(values):
            target[row, [position[t] for t in tags if t in position]] = 1.0
        return target

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(output, target.float())

    def scores(self, output: Tensor) -> Tensor:
        return output.sigmoid()

    def decide(self, scores: Tensor, labels: list[str]) -> str:
        return JOIN.join(labels[i] for i in (scores > THRESHOLD).nonzero().flatten().tolist())

    def metrics(self, scores: Tensor, target: Tensor, labels: list[str]) -> tuple[dict, list[dict], None]:
        from torchmetrics.functional import classification as C

        n, target = len(labels), target.long()
        metrics = {
            "micro_f1": C.multilabel_f1_score(scores, target, num_labels=n, average="micro").item(),
            "macro_f1": C.multilabel_f1_score(scores, target, num_labels=n, average="macro").item(),
            "macro_precision": C.multilabel_precision(scores, target, num_labels=n, average="macro").item(),
            "macro_recall": C.multilabel_recall(scores, target, num_labels=n, average="macro").item(),
            "exact_match": C.multilabel_exact_match(scores, target, num_labels=n).item(),
            "auroc": _auroc(scores, target),
        }
        f1 = C.multilabel_f1_score(scores, target, num_labels=n, average=None)
        per_class = [{"label": labels[i], "f1": f1[i].item(), "support": int(target[:, i].sum())} for i in range(n)]
        return metrics, per_class, None

    def val_metric(self, num_labels: int):
        from torchmetrics.classification import MultilabelF1Score

        return MultilabelF1Score(num_labels=num_labels, average="micro", threshold=THRESHOLD)


def _auroc(scores: Tensor, target: Tensor) -> float:
    """Macro AUROC over the tags; undefined when a tag is on every row or on none."""
    from torchmetrics.functional import classification as C

    positives = target.sum(0)
    if bool(((positives == 0) | (positives == len(target))).any()):
        return float("nan")
    return C.multilabel_auroc(scores, target, num_labels=target.shape[1], average="macro").item()
