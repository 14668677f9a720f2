"""Weighted sum of linearly projected modality vectors, with learned modality weights."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..features import Features
from .base import Fusion, masked_softmax, per_modality, register_fusion


@register_fusion("weighted_sum")
class WeightedSumFusion(Fusion):
    """z = sum_m a_m W_m h_m, a = softmax(learned logits) renormalised over the present modalities.

    Renormalising (rather than zeroing a term) keeps z on the same scale whether one or all
    modalities are there, and an absent modality contributes exactly nothing.
    """

    def __init__(self, *, in_dims: dict[str, int], dim: int = 256, dropout: float = 0.1):
        super().__init__(in_dims=in_dims, dim=dim, dropout=dropout)
        self.branch = per_modality(in_dims, self.make_branch)
        self.logits = nn.Parameter(torch.zeros(len(self.modalities)))  # equal weights at start
        self.drop = nn.Dropout(dropout)
        self.out_dim = dim

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
