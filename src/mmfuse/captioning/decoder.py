"""A small Transformer decoder over caption tokens, conditioned on an image encoder's tokens.

Two ways to condition, by `conditioning`:
- "cross": each decoder block has causal self-attention over the caption so far, then
  cross-attention to the image tokens (the Transformer decoder of Vaswani et al.; BLIP, CoCa);
- "prefix": the image tokens are a prefix of one sequence, and every block is self-attention
  with a mask (image tokens see each other, caption tokens see the image and earlier tokens);
  the shape of ClipCap / SimVLM's prefix LM.

The image tokens keep their place: a learned embedding per grid cell is added to them, since a
CNN's features carry little absolute position and "to the left of" needs it.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from .tokens import PAD


def causal_mask(length: int, device: torch.device | None = None) -> Tensor:
    """(length, length) bool, True where attention is not allowed (a later position)."""
    return torch.triu(torch.ones(length, length, dtype=torch.bool, device=device), diagonal=1)


def prefix_mask(prefix: int, length: int, device: torch.device | None = None) -> Tensor:
    """(prefix + length)^2 bool, True where not allowed: the prefix attends to itself only (all
    of it), caption token i to the whole prefix and to caption tokens <= i."""
    total = prefix + length
    mask = torch.zeros(total, total, dtype=torch.bool, device=device)
    mask[:prefix, prefix:] = True
    mask[prefix:, prefix:] = causal_mask(length, device)
    return mask


class CaptionDecoder(nn.Module):
    def __init__(self, *, vocab_size: int, image_dim: int, image_tokens: int, dim: int = 128, layers: int = 3,
                 heads: int = 4, dropout: float = 0.1, max_length: int = 32,
                 conditioning: Literal["cross", "prefix"] = "cross"):
        super().__init__()
        self.conditioning = conditioning
        self.max_length = max_length
        self.image_in = nn.Sequential(nn.LayerNorm(image_dim), nn.Linear(image_dim, dim))
        self.image_position = nn.Parameter(torch.randn(image_tokens, dim) * 0.02)
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=PAD)
        self.position = nn.Parameter(torch.randn(max_length + 1, dim) * 0.02)  # BOS + max_length tokens
        if conditioning == "cross":
            block = nn.TransformerDecoderLayer(dim, heads, 4 * dim, dropout, batch_first=True, norm_first=True)
            self.blocks = nn.TransformerDecoder(block, layers)
        elif conditioning == "prefix":
            block = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout, batch_first=True, norm_first=True)
            self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        else:
            raise ValueError(f"conditioning must be 'cross' or 'prefix', not {conditioning!r}")
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, vocab_size)

    def memory(self, image_tokens: Tensor) -> Tensor:
        """(B, M, image_dim) encoder tokens -> (B, M, dim) with their grid positions."""
        return self.image_in(image_tokens) + self.image_position

    def forward(self, memory: Tensor, tokens: Tensor) -> Tensor:
        """memory (N, M, dim), tokens (N, t) starting with BOS -> next-token logits (N, t, vocab).

        No padding mask: padding only follows EOS, and causal attention never lets a real token
        see a later one, so pads change nothing the loss reads."""
        length = tokens.shape[1]
        x = self.embed(tokens) + self.position[:length]
        if self.conditioning == "cross":
            mask = causal_mask(length, tokens.device)
            h = self.blocks(x, memory, tgt_mask=mask, tgt_is_causal=True)
        else:
            prefix = memory.shape[1]
            h = self.blocks(torch.cat([memory, x], 1), mask=prefix_mask(prefix, length, tokens.device))[:, prefix:]
        return self.out(self.norm(h))
