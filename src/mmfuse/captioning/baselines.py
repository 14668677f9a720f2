"""Two baselines a captioner must beat on the same split: the caption of the nearest training image
(by the captioner's own image encoder, pooled features, cosine), and the most frequent training
caption given to every image."""
from __future__ import annotations

from collections import Counter
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .model import Captioner


@torch.no_grad()
def pooled_features(model: Captioner, pixels: Tensor, batch_size: int = 256) -> Tensor:
    """(N, C) L2-normalised pooled encoder features, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        parts = [model.encoder({"pixels": pixels[i:i + batch_size]}).pooled for i in range(0, len(pixels), batch_size)]
    finally:
        model.train(was_training)
    return F.normalize(torch.cat(parts).float(), dim=-1)


def nearest_captions(train_features: Tensor, train_captions: Sequence[Sequence[str]], features: Tensor) -> list[str]:
    """Each image gets the first caption of the training image with the most similar features."""
    nearest = (features @ train_features.T).argmax(-1).tolist()
    return [train_captions[i][0] for i in nearest]


def majority_caption(train_captions: Sequence[Sequence[str]]) -> str:
    """The most frequent training caption (the first seen on a tie)."""
    return Counter(c for captions in train_captions for c in captions).most_common(1)[0][0]
