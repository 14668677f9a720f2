"""Early fusion: concatenate the projected modality vectors, then an MLP."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..features import Features
from .base import Fusion, MissingEmbedding, mlp, per_modality, register_fusion


@register_fusion("concat")
class ConcatFusion(Fusion):
    """z = MLP([p_1(h_1); p_2(h_2); ...]) with p_m = ReLU(Linear(h_m)).

    An absent modality's slot holds a learned "missing" vector: the MLP can tell "no image" from an
    image whose features happen to be small, which zeros could not.
    """

    def __init__(self, *, in_dims: dict[str, int], dim: int = 256, dropout: float = 0.1):
        super().__init__(in_dims=in_dims, dim=dim, dropout=dropout)
        self.proj = per_modality(in_dims, lambda d: nn.Sequential(nn.Linear(d, dim), nn.ReLU()))
        self.missing = MissingEmbedding({m: dim for m in self.modalities})
        self.mlp = mlp(len(self.modalities) * dim, dim, dim, dropout)
        self.out_dim = dim

    def forward(self, feats: dict[str, Features]) -> Tensor:
        inputs = self.inputs(feats)
        slots = [self.missing(m, self.proj[m](inputs[m].pooled), inputs[m].present) for m in self.modalities]
        return self.mlp(torch.cat(slots, dim=-1))
