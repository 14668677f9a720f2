"""MulT, light (Tsai et al. 2019): a cross-modal transformer for every ordered pair of modalities."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..features import Features, as_tokens
from .base import (CrossAttentionStack, Fusion, MissingEmbedding, TokenPool, check_heads, per_modality,
                   register_fusion)


@register_fusion("mult")
class MulTFusion(Fusion):
    """Stream a<-b: a's tokens attend to b's tokens (pre-norm cross-attention blocks); each stream
    is mean-pooled over a's real tokens; the streams are concatenated and projected to dim.

    Every modality both asks and answers, with no fixed roles (compare cross_attention).
    A row where b is absent keeps a's tokens unchanged by attention; a row where a is absent gets a
    learned "missing" vector for the stream. With one modality: its pooled, MLP-processed tokens.
    layers (1), heads (4): blocks per stream.
    """

    reads_tokens = True

    def __init__(self, *, in_dims: dict[str, int], dim: int = 256, dropout: float = 0.1,
                 layers: int = 1, heads: int = 4):
        super().__init__(in_dims=in_dims, dim=dim, dropout=dropout)
        check_heads(dim, heads, "mult")
        mods = self.modalities
        self.pairs = [(a, b) for a in mods for b in mods if a != b] or [(mods[0], None)]
        self.proj = per_modality(in_dims, lambda d: nn.Linear(d, dim))
        self.streams = nn.ModuleDict({self._key(a, b): CrossAttentionStack(dim, heads, layers, dropout)
                                      for a, b in self.pairs})
        self.missing = MissingEmbedding({self._key(a, b): dim for a, b in self.pairs})
        self.pool = TokenPool(dim, "mean")
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(len(self.pairs) * dim, dim))
        self.out_dim = dim

    @staticmethod
    def _key(a: str, b: str | None) -> str:
        return f"{a}_from_{b}" if b else a

    def forward(self, feats: dict[str, Features]) -> Tensor:
        inputs = self.inputs(feats)
        tokens = {}
        for m in self.modalities:
            t, mask = as_tokens(inputs[m])
            tokens[m] = (self.proj[m](t), mask)
        pooled = []
        for a, b in self.pairs:
            key = self._key(a, b)
            x, mask = tokens[a]
            x = self.streams[key](x, *tokens[b]) if b else self.streams[key](x)
            pooled.append(self.missing(key, self.pool(x, mask), inputs[a].present))
        return self.out(torch.cat(pooled, dim=-1))
