"""Alignment as an auxiliary loss while a fusion model trains (`train.alignment`).

Two linear projections put each row's pooled image and text features in one space, and the
configured alignment objectives (the same registry `mmfuse align` uses: contrastive, dcca,
autoencoder, adversarial) pull each row's image and text together. The weighted sum is added to
the task loss; prediction never uses it.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..features import Features


class AuxiliaryAlignment(nn.Module):
    def __init__(self, *, image_dim: int, text_dim: int, weights: dict[str, float], dim: int = 128):
        super().__init__()
        from ..align.objectives import create_objective

        self.weights = dict(weights)
        self.project = nn.ModuleDict({"image": nn.Linear(image_dim, dim), "text": nn.Linear(text_dim, dim)})
        self.objectives = nn.ModuleDict({name: create_objective(name, dim=dim, image_dim=image_dim, text_dim=text_dim)
                                         for name in self.weights})
        # A fixed random direction: rows with equal features get equal keys (see positives).
        self.register_buffer("key_image", torch.randn(image_dim, generator=torch.Generator().manual_seed(0)),
                             persistent=False)
        self.register_buffer("key_text", torch.randn(text_dim, generator=torch.Generator().manual_seed(1)),
                             persistent=False)

    def forward(self, feats: dict[str, Features]) -> Tensor:
        """The weighted alignment loss over the rows that have both modalities (0 with < 2 rows)."""
        from ..align.objectives import AlignBatch

        image, text = feats["image"], feats["text"]
        both = image.present & text.present
        if int(both.sum()) < 2:
            return image.pooled.new_zeros(())
        image_in, text_in = image.pooled[both], text.pooled[both]
        batch = AlignBatch(image_in=image_in, text_in=text_in, image_z=self.project["image"](image_in),
                           text_z=self.project["text"](text_in), positives=self.positives(image_in, text_in))
        return sum(weight * self.objectives[name](batch) for name, weight in self.weights.items())

    def positives(self, image: Tensor, text: Tensor) -> Tensor:
        """(B, B): row i's image goes with row j's text when j shows the same image or asks the same text.

        A VQA table repeats both (~10 questions per image, a question over many images), so a
        plain diagonal would push apart pairs that are in fact the same.
        """
        image_key = image.detach() @ self.key_image
        text_key = text.detach() @ self.key_text
        return (image_key[:, None] == image_key[None, :]) | (text_key[:, None] == text_key[None, :])
