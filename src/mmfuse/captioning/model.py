"""The captioner: an image encoder from mmfuse's registry, the caption decoder, and the tokenizer.

The model owns its loss (teacher forcing: the caption shifted by one) and its decoding, in the
manner of nanoGPT's `forward(idx, targets)`.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import CaptionConfig, Config
from ..encoders import create_encoder
from ..encoders.base import Encoder
from ..modalities import MODALITIES
from .decoder import CaptionDecoder
from .search import beam_search, greedy
from .tokens import PAD, CaptionTokenizer


class CoordinateConv(nn.Module):
    """A convolution that also sees x and y (CoordConv, Liu et al. 2018): `conv(x)` plus a second
    kernel, same geometry, over two maps running from -1 to 1 across the width and the height.

    Convolutions and max-pooling are nearly blind to where a pattern sits inside a pooled cell, so
    a 4x4 grid of tokens loses which of two shapes a few pixels apart starts further left; with
    the coordinates as input the CNN can carry "left edge at x" in its features. The original
    kernel is kept as it is (a pretrained one stays valid); only the coordinate kernel is new."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if conv.groups != 1:
            raise ValueError(f"caption.coordinates: the first convolution is grouped ({conv.groups} groups)")
        self.conv = conv
        self.coordinates = nn.Conv2d(2, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                                     conv.dilation, bias=False, padding_mode=conv.padding_mode)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype),
                                torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype), indexing="ij")
        grid = torch.stack([xs, ys]).expand(b, 2, h, w).contiguous(memory_format=torch.channels_last)
        return self.conv(x) + self.coordinates(grid)


def add_coordinates(encoder: Encoder) -> Encoder:
    """Replace the encoder's first Conv2d by a CoordinateConv around it (in place)."""
    for module in encoder.modules():
        for name, child in module.named_children():
            if isinstance(child, nn.Conv2d):
                setattr(module, name, CoordinateConv(child).to(memory_format=torch.channels_last))
                return encoder
    raise ValueError(f"caption.coordinates: image encoder {type(encoder).__name__} has no Conv2d to add x/y channels to")


def build_image_encoder(config: Config) -> Encoder:
    spec = config.encoders.image
    own = MODALITIES["image"].encoder_options(spec)  # image_size
    encoder = create_encoder("image", spec.name, trainable=spec.trainable, **own, **spec.options)
    if config.caption is not None and config.caption.coordinates:
        add_coordinates(encoder)
    return encoder


def image_grid(encoder: Encoder) -> tuple[int, int]:
    """(tokens, width) of the encoder's output, from one blank image (any encoder, any size)."""
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        size = encoder.image_size
        tokens = encoder({"pixels": torch.zeros(1, 3, size, size, dtype=torch.uint8)}).tokens
    encoder.train(was_training)
    return tokens.shape[1], tokens.shape[2]


class Captioner(nn.Module):
    def __init__(self, encoder: Encoder, tokenizer: CaptionTokenizer, caption: CaptionConfig):
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.settings = caption
        count, width = image_grid(encoder)
        self.decoder = CaptionDecoder(vocab_size=tokenizer.vocab_size, image_dim=width, image_tokens=count,
                                      dim=caption.dim, layers=caption.layers, heads=caption.heads,
                                      dropout=caption.dropout, max_length=caption.max_length,
                                      conditioning=caption.conditioning)

    @classmethod
    def build(cls, config: Config, tokenizer: CaptionTokenizer) -> "Captioner":
        return cls(build_image_encoder(config), tokenizer, config.caption or CaptionConfig())

    def memory(self, pixels: Tensor) -> Tensor:
        """(B, 3, H, W) uint8 -> (B, M, dim) conditioning tokens."""
        return self.decoder.memory(self.encoder({"pixels": pixels}).tokens)

    def loss(self, pixels: Tensor, ids: Tensor, owner: Tensor) -> Tensor:
        """Teacher forcing: every caption `ids` (N, L) of image `owner` (N,) predicts its next token.
        Each image is encoded once however many captions it has."""
        memory = self.memory(pixels)[owner]
        logits = self.decoder(memory, ids[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), ignore_index=PAD,
                               label_smoothing=self.settings.label_smoothing)

    @torch.no_grad()
    def generate_ids(self, pixels: Tensor, *, beam_size: int | None = None, length_penalty: float | None = None,
                     max_length: int | None = None) -> list[list[int]]:
        beam_size = beam_size or self.settings.beam_size
        alpha = self.settings.length_penalty if length_penalty is None else length_penalty
        max_length = min(max_length or self.settings.max_length, self.decoder.max_length)
        memory = self.memory(pixels)

        def step(tokens: Tensor, rows: Tensor) -> Tensor:
            return self.decoder(memory[rows], tokens)[:, -1].float().log_softmax(-1)

        if beam_size == 1:
            return greedy(step, len(pixels), max_length, pixels.device)
        return beam_search(step, len(pixels), max_length, beam_size, alpha, pixels.device)

    @torch.no_grad()
    def generate(self, pixels: Tensor, *, batch_size: int = 256, **options) -> list[str]:
        """Captions of (B, 3, H, W) uint8 images (eval mode is the caller's: see `caption_images`)."""
        captions: list[str] = []
        for start in range(0, len(pixels), batch_size):
            ids = self.generate_ids(pixels[start:start + batch_size], **options)
            captions += [self.tokenizer.decode(row) for row in ids]
        return captions


def caption_images(model: Captioner, pixels: Tensor, **options) -> list[str]:
    """Captions in eval mode (BatchNorm statistics, no dropout), the mode restored after."""
    was_training = model.training
    model.eval()
    try:
        return model.generate(pixels, **options)
    finally:
        model.train(was_training)


def pixels_of(model: Captioner, images: Sequence) -> Tensor:
    """PIL images -> (B, 3, H, W) uint8 at the encoder's size."""
    return model.encoder.prepare(list(images))["pixels"]
