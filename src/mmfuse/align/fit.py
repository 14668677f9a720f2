"""The LightningModule that trains an AlignedModel's heads, and its batches of pair indices
(imported only when aligning: `import mmfuse` never loads Lightning)."""
from __future__ import annotations

import math
from typing import Any, Callable

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Sampler

from ..config import AlignConfig
from .objectives import Objective
from .train import PairFeatures, batch_of_pairs


class ShuffledPairs(Sampler[list[int]]):
    """`steps` batches of `batch` pair indices per epoch, from a new permutation drawn each epoch
    from one seeded generator (the ragged last batch is dropped: DCCA needs full ones)."""

    def __init__(self, pairs: int, batch: int, seed: int):
        self.pairs, self.batch = pairs, batch
        self.steps = max(1, pairs // batch)
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self):
        order = torch.randperm(self.pairs, generator=self.generator)
        for step in range(self.steps):
            yield order[step * self.batch: (step + 1) * self.batch].tolist()

    def __len__(self) -> int:
        return self.steps


class AlignTraining(L.LightningModule):
    """The heads (and each objective's own modules) trained on the weighted sum of the objectives,
    AdamW with cosine decay per step; `history` keeps each epoch's mean loss."""

    def __init__(self, heads: nn.ModuleDict, objectives: dict[str, Objective], weights: dict[str, float],
                 data: PairFeatures, align: AlignConfig, steps_per_epoch: int, echo: Callable[[str], None]):
        super().__init__()
        self.heads, self.objectives = heads, nn.ModuleDict(objectives)
        self.weights, self.data, self.align, self.echo = weights, data, align, echo
        self.steps_per_epoch = steps_per_epoch
        self.losses: list[float] = []
        self.history: list[float] = []

    def training_step(self, rows: Tensor, _: int) -> Tensor:
        pairs = batch_of_pairs(self.heads, self.data, rows)
        loss = sum(self.weights[name] * objective(pairs) for name, objective in self.objectives.items())
        self.losses.append(loss.item())
        return loss

    def on_train_epoch_end(self) -> None:
        self.history.append(float(np.mean(self.losses)))
        self.losses.clear()
        epoch, epochs = self.current_epoch + 1, self.align.epochs
        if epoch == 1 or epoch % 10 == 0 or epoch == epochs:
            self.echo(f"epoch {epoch}/{epochs}  loss {self.history[-1]:.4f}")

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.align.lr, weight_decay=self.align.weight_decay)
        total = self.align.epochs * self.steps_per_epoch
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
