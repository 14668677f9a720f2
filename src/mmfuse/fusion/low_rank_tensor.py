"""Low-rank Multimodal Fusion (LMF, Liu et al. 2018): TFN without building the tensor."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..features import Features
from .base import Fusion, register_fusion


@register_fusion("low_rank_tensor")
class LowRankTensorFusion(Fusion):
    """z = sum_r w_r prod_m (W_m^r [x_m; 1]) + b.

    TFN's weight on the outer product, factored into rank `rank` (default 8) per-modality factors
    W_m^r (shape (D_m + 1, dim)): the product of the factor projections equals the full tensor
    contraction, at a cost linear in the number of modalities instead of exponential.
    Absent modality: its input is [0...0; 1], so its factor projection is the learned last row of
    W_m (TFN's absence model, and in effect a learned "missing" vector per rank).
    """

    def __init__(self, *, in_dims: dict[str, int], dim: int = 256, dropout: float = 0.1, rank: int = 8):
        super().__init__(in_dims=in_dims, dim=dim, dropout=dropout)
        # std 1/sqrt(D+1): each factor projection starts at unit scale, so their product does too.
        self.factors = nn.ParameterDict({
            m: nn.Parameter(torch.randn(rank, d + 1, dim) / math.sqrt(d + 1))
            for m, d in sorted(in_dims.items())})
        self.rank_weights = nn.Parameter(torch.randn(rank) / math.sqrt(rank))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.drop = nn.Dropout(dropout)
        self.out_dim = dim

    def forward(self, feats: dict[str, Features]) -> Tensor:
        inputs = self.inputs(feats)
        fused = None
        for m in self.modalities:
            x = inputs[m].pooled  # already zero on absent rows
            x = torch.cat([x, torch.ones_like(x[:, :1])], dim=-1)  # [x; 1]
            projected = torch.einsum("bi,rid->brd", x, self.factors[m])  # (B, rank, dim)
            fused = projected if fused is None else fused * projected
        return self.drop(torch.einsum("r,brd->bd", self.rank_weights, fused) + self.bias)
