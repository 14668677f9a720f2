"""Adversarial alignment (ACMR, Wang et al., 2017): a modality discriminator behind a
gradient-reversal layer, plus a bidirectional ranking loss on the pairs.

The discriminator learns to tell image projections from text projections; the reversed gradient
trains the projections to make that impossible, so the two modalities share one distribution.
That alone says nothing about which text goes with which image (a constant projection would fool
the discriminator), hence the hinge ranking term over the batch, as in ACMR.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import AlignBatch, Objective, register_objective


class ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, strength: float) -> Tensor:
        ctx.strength = strength
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.strength * grad, None


def ranking_loss(image: Tensor, text: Tensor, positives: Tensor, margin: float) -> Tensor:
    """Mean hinge over every (pair, negative) in both directions, on cosine similarity."""
    sim = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
    matched = sim.diagonal()
    negatives = (~positives).float()
    image_to_text = (margin + sim - matched[:, None]).clamp_min(0) * negatives
    text_to_image = (margin + sim - matched[None, :]).clamp_min(0) * negatives
    return (image_to_text.sum() + text_to_image.sum()) / negatives.sum().clamp_min(1.0)


@register_objective("adversarial")
class Adversarial(Objective):
    cosine_space = True

    def __init__(self, *, strength: float = 1.0, adversary_weight: float = 1.0, margin: float = 0.2,
                 hidden: int = 64, **dims):
        super().__init__(**dims)
        self.strength, self.adversary_weight, self.margin = strength, adversary_weight, margin
        self.discriminator = nn.Sequential(nn.Linear(self.dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def discriminator_loss(self, batch: AlignBatch) -> Tensor:
        """Binary cross-entropy of 'is this an image projection?' (log 2 at chance)."""
        codes = torch.cat([batch.image_z, batch.text_z])
        is_image = torch.cat([torch.ones(len(batch.image_z)), torch.zeros(len(batch.text_z))]).to(codes)
        logits = self.discriminator(ReverseGradient.apply(codes, self.strength)).squeeze(-1)
        return F.binary_cross_entropy_with_logits(logits, is_image)

    def forward(self, batch: AlignBatch) -> Tensor:
        rank = ranking_loss(batch.image_z, batch.text_z, batch.positives, self.margin)
        return rank + self.adversary_weight * self.discriminator_loss(batch)
