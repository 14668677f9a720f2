"""Task heads over the fused vector, and each task's loss and output transform."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..activations import GELU


class TaskHead(nn.Module):
    """MLP (or one linear layer when hidden=0) from the fused vector to the task outputs."""

    def __init__(self, *, in_dim: int, out_dim: int, task: str, hidden: int = 256, dropout: float = 0.1):
        super().__init__()
        self.task = task
        if hidden:
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), GELU(), nn.Dropout(dropout),
                                     nn.Linear(hidden, out_dim))
        else:
            self.net = nn.Linear(in_dim, out_dim)

    def forward(self, fused: Tensor) -> Tensor:
        out = self.net(fused)
        return out.squeeze(-1) if self.task == "regression" else out

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        if self.task == "classification":
            return F.cross_entropy(output, target)
        if self.task == "multilabel":
            return F.binary_cross_entropy_with_logits(output, target.float())
        return F.mse_loss(output, target.float())

    def scores(self, output: Tensor) -> Tensor:
        """Probabilities (class / per tag) or the regression value."""
        if self.task == "classification":
            return output.softmax(-1)
        if self.task == "multilabel":
            return output.sigmoid()
        return output


def create_head(*, in_dim: int, num_labels: int, task: str, hidden: int, dropout: float,
                linear: bool = False) -> TaskHead:
    out_dim = 1 if task == "regression" else num_labels
    return TaskHead(in_dim=in_dim, out_dim=out_dim, task=task, hidden=0 if linear else hidden, dropout=dropout)
