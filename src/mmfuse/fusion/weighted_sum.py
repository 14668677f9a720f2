"""Weighted sum of linearly projected modality vectors, with learned modality weights."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..features import Features
from .base import Fusion, masked_softmax, per_modality, register_fusion


@register_fusion("weighted_sum")
class WeightedSumFusion(Fusion):
    """z = sum_m a_m W_m h_m, a = softmax(learned logits) renormalised over the present modalities.

    Renormalising (rather than zeroing a term) keeps z on the same scale whether one or all
    modalities are there, and an absent modality contributes exactly nothing.

    Modality importance is a knob: `weights: {image: 0.3, text: 0.7}` starts the learned weights
    there (a prior, equal by default), and `fixed_weights: true` keeps them there.
    """

    def __init__(self, *, in_dims: dict[str, int], dim: int = 256, dropout: float = 0.1,
                 weights: dict[str, float] | None = None, fixed_weights: bool = False):
        super().__init__(in_dims=in_dims, dim=dim, dropout=dropout)
        self.branch = per_modality(in_dims, self.make_branch)
        self.logits = nn.Parameter(self.initial_logits(weights), requires_grad=not fixed_weights)
        self.drop = nn.Dropout(dropout)
        self.out_dim = dim

    def initial_logits(self, weights: dict[str, float] | None) -> Tensor:
        """log(weights), so that softmax(logits) gives back the requested (normalised) weights."""
        if weights is None:
            return torch.zeros(len(self.modalities))
        if set(weights) != set(self.modalities):
            raise ConfigError(f"fusion.options.weights: give one weight per modality "
                              f"({', '.join(self.modalities)}), got {', '.join(sorted(weights)) or 'none'}")
        bad = {m: w for m, w in weights.items() if not (isinstance(w, (int, float)) and w > 0)}
        if bad:
            raise ConfigError(f"fusion.options.weights: weights must be positive numbers, got {bad}")
        return torch.tensor([math.log(weights[m]) for m in self.modalities], dtype=torch.float32)

    def make_branch(self, in_dim: int) -> nn.Module:
        return nn.Linear(in_dim, self.dim)

    def forward(self, feats: dict[str, Features]) -> Tensor:
        inputs = self.inputs(feats)
        present = self.present(inputs)
        weights = masked_softmax(self.logits.expand(present.shape), present)  # (B, M)
        branches = torch.stack([self.branch[m](inputs[m].pooled) for m in self.modalities], dim=1)
        return self.drop(torch.einsum("bm,bmd->bd", weights, branches))

    def modality_weights(self) -> dict[str, float]:
        weights = torch.softmax(self.logits.detach(), dim=0).tolist()
        return dict(zip(self.modalities, weights))
