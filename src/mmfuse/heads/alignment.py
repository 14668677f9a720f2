"""Alignment as an auxiliary loss while a fusion model trains (`train.alignment`).

Two linear projections put each row's pooled features of two modalities (the model's first two,
in registry order: image and text, or image and audio) in one space, and the configured alignment
objectives (the same registry `mmfuse align` uses: contrastive, dcca, autoencoder, adversarial)
pull each row's pair together; the objectives call the first side "image" and the second "text".
The weighted sum is added to the task loss; prediction never uses it.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..features import Features
from ..modalities import MODALITIES


class AuxiliaryAlignment(nn.Module):
    def __init__(self, *, dims: dict[str, int], weights: dict[str, float], dim: int = 128):
        super().__init__()
        from ..align.objectives import create_objective

        if len(dims) < 2:
            raise ValueError("alignment needs two modalities")
        self.pair = [m for m in MODALITIES if m in dims][:2]
        image_dim, text_dim = (dims[m] for m in self.pair)
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

        image, text = (feats[m] for m in self.pair)
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
