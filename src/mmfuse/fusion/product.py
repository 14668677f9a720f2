"""Multiplicative fusion: low-rank bilinear pooling (MLB, Kim et al. 2017)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..features import Features
from .base import Fusion, per_modality, register_fusion


@register_fusion("product")
class ProductFusion(Fusion):
    """z = P( prod_m tanh(U_m h_m) ): an element-wise product is a rank-limited bilinear map.

    The product lets one modality switch features of the other on and off, which a sum cannot.
    An absent modality's factor is 1, the identity of the product, so it simply drops out.
    joint_dim: width of the factors (None: dim).
    """

    def __init__(self, *, in_dims: dict[str, int], dim: int = 256, dropout: float = 0.1,
                 joint_dim: int | None = None):
        super().__init__(in_dims=in_dims, dim=dim, dropout=dropout)
        joint_dim = joint_dim or dim
        self.factor = per_modality(in_dims, lambda d: nn.Linear(d, joint_dim))
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(joint_dim, dim))
        self.out_dim = dim

    def forward(self, feats: dict[str, Features]) -> Tensor:
        inputs = self.inputs(feats)
        joint = None
        for m in self.modalities:
            u = torch.tanh(self.factor[m](inputs[m].pooled))
            u = torch.where(inputs[m].present[:, None], u, torch.ones_like(u))
            joint = u if joint is None else joint * u
        return self.out(joint)
