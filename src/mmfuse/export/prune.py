"""Global magnitude pruning of the fusion + head linear weights, then a short fine-tune.

torch.nn.utils.prune keeps each pruned weight as `weight_orig * weight_mask`, recomputed before
every forward, so the fine-tune updates only the surviving weights; `prune.remove` then bakes the
zeros in. Encoders are not pruned and do not train here: their features for the train split are
computed once (frozen encoders come from the feature cache), so an epoch costs only fusion + head.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from ..errors import MmfuseError
from ..features import Features
from ..data.batching import make_loader

log = logging.getLogger(__name__)
ENCODE_CHUNK = 256


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, "weight") of every nn.Linear in fusion and head.

    Linears inside nn.MultiheadAttention are left out: attention reads `out_proj.weight` without
    calling out_proj, so prune's recompute-before-forward hook would never run for them.
    """
    inside_attention = {id(m) for mha in model.modules() if isinstance(mha, nn.MultiheadAttention)
                        for m in mha.modules()}
    modules = [*model.fusion.modules(), *model.head.modules()]
    return [(m, "weight") for m in modules if isinstance(m, nn.Linear) and id(m) not in inside_attention]


def sparsity(model: nn.Module) -> float:
    """Fraction of exact zeros over the prunable weights."""
    weights = [getattr(module, name) for module, name in prunable_weights(model)]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / max(total, 1)


@torch.no_grad()
def freeze_features(dataset, model) -> None:
    """Replace every prepared (trainable-encoder) column by its features: encoders stay fixed."""
    for modality, column in dataset.columns.items():
        prepared = column.prepared_table()
        if prepared is None:
            continue
        encoder = model.encoders[modality].eval()
        count = len(next(iter(prepared.values())))
        parts = [encoder({k: v[i : i + ENCODE_CHUNK] for k, v in prepared.items()})
                 for i in range(0, count, ENCODE_CHUNK)]
        tokens = None if parts[0].tokens is None else torch.cat([p.tokens for p in parts])
        mask = None if parts[0].mask is None else torch.cat([p.mask for p in parts])
        column.features = Features(torch.cat([p.pooled for p in parts]), tokens, mask)
        column.prepared = column.prepare = None


def finetune(predictor, train, epochs: int, lr: float) -> None:
    """A few epochs of fusion + head training on `train` (manifest rows), masks kept: FusionTask
    in mmfuse.train's Lightning loop, at a constant `lr`."""
    from ..train import FusionTask, fit_briefly

    model, config = predictor.model, predictor.config
    dataset = predictor._dataset(train)
    freeze_features(dataset, model)
    tuned = config.model_copy(deep=True)
    tuned.train.lr, tuned.train.schedule, tuned.train.epochs = lr, "constant", epochs
    torch.manual_seed(config.train.seed)
    loader = make_loader(dataset, tuned, shuffle=True)
    # Without train.alignment's auxiliary loss: it shapes the encoders, which do not train here.
    alignment, model.alignment = model.alignment, None
    try:
        fit_briefly(FusionTask(model, tuned, steps_per_epoch=len(loader)), loader, epochs)
    finally:
        model.alignment = alignment
    model.eval()


def prune_and_finetune(predictor, amount: float, train, *, epochs: int = 2,
                       lr: float | None = None) -> dict[str, Any]:
    """Prune `amount` of the fusion + head linear weights (smallest |w| globally), fine-tune on
    `train` (the configured train split's rows), bake the zeros in.

    lr defaults to a tenth of the training peak: the weights are already trained.
    """
    if not 0.0 < amount < 1.0:
        raise MmfuseError(f"--prune {amount}: the sparsity must be between 0 and 1 (e.g. 0.5)")
    if epochs < 0:
        raise MmfuseError(f"fine-tune epochs must be >= 0, got {epochs}")
    start = time.perf_counter()
    weights = prunable_weights(predictor.model)
    prune.global_unstructured(weights, pruning_method=prune.L1Unstructured, amount=amount)
    if epochs:
        finetune(predictor, train, epochs, lr if lr is not None else predictor.config.train.lr / 10)
    for module, name in weights:
        prune.remove(module, name)
    return {"amount": amount, "sparsity": sparsity(predictor.model), "finetune_epochs": epochs,
            "seconds": time.perf_counter() - start}
