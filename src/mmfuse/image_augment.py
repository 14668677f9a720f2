"""Pixel augmentation for a trainable image encoder's batches (batch.modalities[m].prepared["pixels"],
uint8 (N, 3, H, W)): FixMatch's two strengths, made safe for VQA.

- weak: a random shift of up to 5% of the side (FixMatch's weak view is a flip and a shift; a flip
  would swap the answers to left/right questions).
- strong: the shift with up to 10 degrees of rotation, 8 of shear and 15% shrinking, brightness and
  contrast jitter (0.4), and at random sharpening, a slight blur and pixel noise: a RandAugment
  without the operations that change answers (no hue or saturation change, no solarize, posterize
  or equalize: questions ask about colours; no cutout: it can hide an object that is counted).

Shifts stay small so no object leaves the frame (a count would change), and the uncovered corners
take the colour of the image's own border: black ones would look like objects.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Literal

import torch
from torch import Tensor

from .data.batching import Batch
from .errors import MmfuseError

Strength = Literal["weak", "strong"]


def border_colour(image: Tensor) -> list[float]:
    """The median colour of the outermost pixels of a (3, H, W) image."""
    border = torch.cat([image[:, 0], image[:, -1], image[:, :, 0], image[:, :, -1]], dim=1)
    return border.float().median(dim=1).values.tolist()


def augment_pixels(pixels: Tensor, strength: Strength) -> Tensor:
    """Each image of (N, 3, H, W) uint8 with its own random transform of that strength."""
    from torchvision.transforms import v2

    if pixels.dtype != torch.uint8:  # ColorJitter and the fill colour assume 0-255 values
        raise MmfuseError(f"image augmentation (train.image_augment, semi_supervised.image_augment) works on 8-bit "
                          f"pixels, as mmfuse's timm image encoders prepare them; this image encoder prepares "
                          f"{pixels.dtype} (normalised) pixels: set both to false for it")
    # Built once per batch; only the affine's fill colour depends on the image.
    photometric = v2.Compose([v2.ColorJitter(brightness=0.4, contrast=0.4), v2.RandomAdjustSharpness(2.0, p=0.5),
                              v2.RandomApply([v2.GaussianBlur(3, sigma=(0.1, 1.0))], p=0.5)])
    out = []
    for image in pixels:
        fill = border_colour(image)
        if strength == "weak":
            image = v2.RandomAffine(degrees=0, translate=(0.05, 0.05), fill=fill)(image)
        else:
            image = v2.RandomAffine(degrees=10, translate=(0.05, 0.05), shear=8, scale=(0.85, 1.0), fill=fill)(image)
            image = photometric(image)
            if torch.rand(()) < 0.5:  # pixel noise
                image = (image.float() + 8 * torch.randn(image.shape)).clamp(0, 255).to(torch.uint8)
        out.append(image)
    return torch.stack(out)


def augment_batch(batch: Batch, strength: Strength) -> Batch:
    """The batch with every modality that carries pixels augmented; others as they are."""
    parts = {m: replace(p, prepared={**p.prepared, "pixels": augment_pixels(p.prepared["pixels"], strength)})
             if p.prepared is not None and "pixels" in p.prepared else p for m, p in batch.modalities.items()}
    return replace(batch, modalities=parts)
