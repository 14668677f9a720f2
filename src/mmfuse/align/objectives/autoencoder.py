"""Dual autoencoder with a correlation loss between the latent codes (Feng et al., 2014 style).

Each modality's projection is its autoencoder's latent code: a decoder per modality rebuilds
the (standardised) encoder features from it, which keeps the codes informative, and a
correlation term ties the two codes dimension by dimension. Without the reconstruction terms
the correlation alone would be maximised by a degenerate code.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ...activations import GELU
from .base import AlignBatch, Objective, center, register_objective


def dimension_correlation(a: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    """Mean over dimensions of the Pearson correlation of a[:, d] and b[:, d]."""
    a, b = center(a), center(b)
    return ((a * b).sum(0) / (a.norm(dim=0) * b.norm(dim=0) + eps)).mean()


def decoder(dim: int, out_dim: int, hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, hidden), GELU(), nn.Linear(hidden, out_dim))


@register_objective("autoencoder")
class CorrelatedAutoencoders(Objective):
    def __init__(self, *, correlation_weight: float = 1.0, hidden: int = 256, **dims):
        super().__init__(**dims)
        self.correlation_weight = correlation_weight
        self.image_decoder = decoder(self.dim, self.image_dim, hidden)
        self.text_decoder = decoder(self.dim, self.text_dim, hidden)

    def forward(self, batch: AlignBatch) -> Tensor:
        rebuild = (F.mse_loss(self.image_decoder(batch.image_z), batch.image_in)
                   + F.mse_loss(self.text_decoder(batch.text_z), batch.text_in))
        tie = 1.0 - dimension_correlation(batch.image_z, batch.text_z)
        return rebuild + self.correlation_weight * tie
