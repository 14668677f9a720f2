"""Symmetric InfoNCE with a learnable temperature (CLIP), aware of repeated captions.

CLIP treats every other item in the batch as a negative. Caption data often repeats a caption
(easy-VQA: 24 distinct captions for 5,000 images), so here the target of an image is spread
evenly over every text in the batch that describes it, instead of pushing equal captions apart.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import AlignBatch, Objective, register_objective


def soft_cross_entropy(logits: Tensor, positives: Tensor) -> Tensor:
    targets = positives.float() / positives.float().sum(1, keepdim=True)
    return -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()


@register_objective("contrastive")
class Contrastive(Objective):
    cosine_space = True

    def __init__(self, *, temperature: float = 0.07, max_scale: float = 100.0, **dims):
        super().__init__(**dims)
        # Learned as log(1 / T) and clamped like CLIP, so the logits cannot blow up.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        self.max_scale = max_scale

    def forward(self, batch: AlignBatch) -> Tensor:
        image = F.normalize(batch.image_z, dim=-1)
        text = F.normalize(batch.text_z, dim=-1)
        scale = self.logit_scale.exp().clamp(max=self.max_scale)
        logits = scale * image @ text.T
        return 0.5 * (soft_cross_entropy(logits, batch.positives) + soft_cross_entropy(logits.T, batch.positives.T))
