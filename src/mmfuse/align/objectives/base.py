"""What every alignment objective sees, and the registry they are created from.

An objective is a small `nn.Module` (it may own parameters: a temperature, decoders, a
discriminator) that turns one batch of paired projections into a scalar loss. Several are
combined by a weighted sum (`align.objectives: {contrastive: 1.0, dcca: 0.5}`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...registry import Registry


@dataclass
class AlignBatch:
    image_in: Tensor  # (B, Di) standardised frozen image features
    text_in: Tensor  # (B, Dt) standardised frozen text features
    image_z: Tensor  # (B, d) image projections (not normalised)
    text_z: Tensor  # (B, d) text projections
    positives: Tensor  # (B, B) bool: text j describes image i (the same pair, image or caption)


class Objective(nn.Module):
    # True when the loss compares projections by cosine, so they can be used for retrieval as
    # they are; False ones (dcca, autoencoder) get a CCA read-out after training (see readout).
    cosine_space: bool = False

    def __init__(self, *, dim: int, image_dim: int, text_dim: int):
        super().__init__()
        self.dim, self.image_dim, self.text_dim = dim, image_dim, text_dim

    def forward(self, batch: AlignBatch) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


OBJECTIVES: Registry[Objective] = Registry("alignment objective")
register_objective = OBJECTIVES.register


def center(x: Tensor) -> Tensor:
    return x - x.mean(0, keepdim=True)


def covariance(a: Tensor, b: Tensor) -> Tensor:
    """(Da, Db) covariance of the columns of two centred (B, D) batches."""
    return a.T @ b / max(1, a.shape[0] - 1)


def inverse_sqrt(matrix: Tensor, eps: float) -> Tensor:
    """matrix^(-1/2) of a symmetric positive (semi)definite matrix, eigenvalues floored at eps."""
    values, vectors = torch.linalg.eigh(matrix)
    return vectors @ torch.diag(values.clamp_min(eps).rsqrt()) @ vectors.T
