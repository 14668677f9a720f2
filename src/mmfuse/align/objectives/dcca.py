"""Deep CCA (Andrew et al., 2013): maximise the total canonical correlation of the projections.

corr = sum of the top-k singular values of T = S11^-1/2 S12 S22^-1/2, with the covariances
regularised (S11 + r I) so small batches stay invertible. The loss is -corr / k (so 0 .. -1).
The projections' coordinates are not matched by this loss (only their canonical directions),
so retrieval uses a CCA read-out fitted on the training projections (`cca_readout`).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import AlignBatch, Objective, center, covariance, inverse_sqrt, register_objective


def canonical_correlations(a: Tensor, b: Tensor, *, reg: float) -> Tensor:
    """All canonical correlations of two (B, d) batches, largest first.

    Whitening by Cholesky factors (S = L L^T; L^-1 S12 L2^-T has the same singular values as
    S11^-1/2 S12 S22^-1/2): the gradient of an eigendecomposition divides by eigenvalue gaps and
    turns to NaN when a modality has fewer distinct inputs than dimensions (24 captions, d=128).
    """
    a, b = center(a), center(b)
    eye = torch.eye(a.shape[1], device=a.device, dtype=a.dtype)
    chol_a = torch.linalg.cholesky(covariance(a, a) + reg * eye)
    chol_b = torch.linalg.cholesky(covariance(b, b) + reg * eye)
    left = torch.linalg.solve_triangular(chol_a, covariance(a, b), upper=False)  # L_a^-1 S12
    whitened = torch.linalg.solve_triangular(chol_b, left.T, upper=False).T  # ... L_b^-T
    return torch.linalg.svdvals(whitened)


def cca_readout(a: Tensor, b: Tensor, *, reg: float = 1e-3, eps: float = 1e-6) -> dict[str, Tensor]:
    """Linear CCA on fitted projections: per modality a mean and a (d, d) matrix whose columns
    are the canonical directions, so that (z - mean) @ matrix puts matched pairs on the same axes.
    Each direction is weighted by its correlation, so uncorrelated (noise) directions fade out of
    the cosine instead of counting as much as the aligned ones."""
    mean_a, mean_b = a.mean(0), b.mean(0)
    a, b = a - mean_a, b - mean_b
    eye = torch.eye(a.shape[1], dtype=a.dtype)
    whiten_a = inverse_sqrt(covariance(a, a) + reg * eye, eps)
    whiten_b = inverse_sqrt(covariance(b, b) + reg * eye, eps)
    u, correlations, vh = torch.linalg.svd(whiten_a @ covariance(a, b) @ whiten_b)
    return {"image_mean": mean_a, "image_matrix": whiten_a @ u * correlations,
            "text_mean": mean_b, "text_matrix": whiten_b @ vh.T * correlations}


@register_objective("dcca")
class DeepCCA(Objective):
    def __init__(self, *, top_k: int | None = None, reg: float = 1e-3, **dims):
        super().__init__(**dims)
        self.top_k = min(top_k or self.dim, self.dim)
        self.reg = reg

    def forward(self, batch: AlignBatch) -> Tensor:
        correlations = canonical_correlations(batch.image_z, batch.text_z, reg=self.reg)
        return -correlations[: self.top_k].sum() / self.top_k
