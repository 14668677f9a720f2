"""The prediction head over the fused vector; its task (mmfuse.tasks) gives the loss and scores."""
from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

from ..activations import GELU

if TYPE_CHECKING:
    from ..tasks import Task


class TaskHead(nn.Module):
    """MLP (or one linear layer when hidden=0) from the fused vector to the task outputs."""

    def __init__(self, *, in_dim: int, out_dim: int, task: Task, hidden: int = 256, dropout: float = 0.1):
        super().__init__()
        self.task = task
        self.out_dim = out_dim
        if hidden:
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), GELU(), nn.Dropout(dropout),
                                     nn.Linear(hidden, out_dim))
        else:
            self.net = nn.Linear(in_dim, out_dim)

    def forward(self, fused: Tensor) -> Tensor:
        return self.task.shape(self.net(fused))

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return self.task.loss(output, target)

    def scores(self, output: Tensor) -> Tensor:
        """Probabilities (per class / per tag) or the regression value."""
        return self.task.scores(output)


def create_head(*, in_dim: int, num_labels: int, task: Task, hidden: int, dropout: float,
                linear: bool = False) -> nn.Module:
    return task.head(in_dim=in_dim, num_labels=num_labels, hidden=0 if linear else hidden, dropout=dropout)
