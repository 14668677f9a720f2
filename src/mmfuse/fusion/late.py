"""Late (decision-level) fusion: a full model per modality, outputs mixed by learned weights."""
from __future__ import annotations

from torch import nn

from .base import mlp, register_fusion
from .weighted_sum import WeightedSumFusion


@register_fusion("late")
class LateFusion(WeightedSumFusion):
    """z = sum_m a_m g_m(h_m), g_m a per-modality MLP, a = softmax(logits) over present modalities.

    Same mixing as weighted_sum, but each g_m is nonlinear and the head on top is linear
    (wants_linear_head), so the prediction is a weighted vote of per-modality predictions:
    no feature interaction between modalities, by design.
    """

    wants_linear_head = True

    def make_branch(self, in_dim: int) -> nn.Module:
        return mlp(in_dim, self.dim, self.dim, self.dropout)
