"""Raw model outputs for a dataset: the one forward loop shared by predict, evaluate and export.

Kept apart from `evaluate` (torchmetrics) and `train` (Lightning) so predicting with a saved model
imports neither.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .data.batching import TableDataset, make_loader
from .model import MultimodalModel


@torch.no_grad()
def predict_outputs(model: MultimodalModel, dataset: TableDataset, config, device: str = "cpu") -> Tensor:
    """Raw head outputs for every row of `dataset`, in row order."""
    model.eval().to(device)
    outputs = torch.empty(0)
    rows = []
    parts = []
    for batch in make_loader(dataset, config, shuffle=False):
        batch = _to(batch, device)
        parts.append(model(batch).float().cpu())
        rows.append(batch.rows.cpu())
    if parts:
        outputs = torch.cat(parts)[torch.argsort(torch.cat(rows))]
    return outputs


def _to(batch, device):
    if str(device) == "cpu":
        return batch
    from lightning.fabric.utilities.apply_func import move_data_to_device

    return move_data_to_device(batch, device)
