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
def predict_outputs(model: MultimodalModel, dataset: TableDataset, config, device: str = "cpu") -> Tensor | dict[str, Tensor]:
    """Raw head outputs for every row of `dataset`, in row order ({task: outputs} from a
    multi-task model)."""
    model.eval().to(device)
    rows = []
    parts = []
    for batch in make_loader(dataset, config, shuffle=False):
        batch = _to(batch, device)
        output = model(batch)
        parts.append({k: v.float().cpu() for k, v in output.items()} if isinstance(output, dict) else output.float().cpu())
        rows.append(batch.rows.cpu())
    if not parts:
        return torch.empty(0)
    order = torch.argsort(torch.cat(rows))
    if isinstance(parts[0], dict):
        return {name: torch.cat([part[name] for part in parts])[order] for name in parts[0]}
    return torch.cat(parts)[order]


def _to(batch, device):
    if str(device) == "cpu":
        return batch
    from lightning.fabric.utilities.apply_func import move_data_to_device

    return move_data_to_device(batch, device)
