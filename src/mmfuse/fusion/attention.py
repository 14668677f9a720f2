"""Attention over modality vectors: a learned scorer decides, per row, how much each modality counts."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..features import Features
from .base import Fusion, masked_softmax, per_modality, register_fusion


@register_fusion("attention")
class AttentionFusion(Fusion):
    """z = sum_m a_m p_m, p_m = Linear(h_m), a = softmax over present m of score(p_m).

    Unlike weighted_sum the weights depend on the input: a row whose image is uninformative can
    lean on its text. Absent modalities get weight exactly 0.
    """

    def __init__(self, *, in_dims: dict[str, int], dim: int = 256, dropout: float = 0.1):
        super().__init__(in_dims=in_dims, dim=dim, dropout=dropout)
        self.proj = per_modality(in_dims, lambda d: nn.Linear(d, dim))
        self.score = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1))
        self.drop = nn.Dropout(dropout)
        self.out_dim = dim

    def forward(self, feats: dict[str, Features]) -> Tensor:
        inputs = self.inputs(feats)
        projected = torch.stack([self.proj[m](inputs[m].pooled) for m in self.modalities], dim=1)  # (B,M,D)
        weights = masked_softmax(self.score(projected).squeeze(-1), self.present(inputs))
        return self.drop(torch.einsum("bm,bmd->bd", weights, projected))
