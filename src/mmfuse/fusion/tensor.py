"""Tensor Fusion Network (Zadeh et al. 2017): the outer product of [h_m; 1] over modalities."""
from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn

from ..features import Features
from .base import Fusion, mlp, per_modality, register_fusion


@register_fusion("tensor")
class TensorFusion(Fusion):
    """z = MLP(flatten([h_1; 1] (x) [h_2; 1] (x) ...)), h_m = ReLU(Linear(x_m)) of width rank_dim.

    The appended 1 keeps the unimodal terms (h_1, h_2) and the constant beside every cross term
    (h_1 h_2^T), so the MLP sees all orders of interaction explicitly. The tensor has
    (rank_dim + 1) ** M entries, hence the small rank_dim (default 32: 1089 for two modalities).

    Absence, as TFN models it: an absent modality's vector becomes [0...0; 1]. Every entry that
    involves it vanishes and only the sub-tensor of the remaining modalities survives, so the
    output is a function of the present modalities alone.
    """

    def __init__(self, *, in_dims: dict[str, int], dim: int = 256, dropout: float = 0.1,
                 rank_dim: int = 32):
        super().__init__(in_dims=in_dims, dim=dim, dropout=dropout)
        self.proj = per_modality(in_dims, lambda d: nn.Sequential(nn.Linear(d, rank_dim), nn.ReLU()))
        size = math.prod(rank_dim + 1 for _ in self.modalities)
        self.mlp = nn.Sequential(nn.Dropout(dropout), mlp(size, dim, dim, dropout))
        self.out_dim = dim

    def forward(self, feats: dict[str, Features]) -> Tensor:
        inputs = self.inputs(feats)
        fused = None
        for m in self.modalities:
            h = self.proj[m](inputs[m].pooled)
            h = torch.where(inputs[m].present[:, None], h, torch.zeros_like(h))
            h = torch.cat([h, torch.ones_like(h[:, :1])], dim=-1)  # [h; 1]
            fused = h if fused is None else rearrange(
                torch.einsum("bi,bj->bij", fused, h), "b i j -> b (i j)")
        return self.mlp(fused)
