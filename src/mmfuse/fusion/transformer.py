"""Transformer fusion: all tokens of all modalities in one sequence, read out from a CLS token."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..features import Features, as_tokens
from .base import Fusion, check_heads, per_modality, register_fusion


@register_fusion("transformer")
class TransformerFusion(Fusion):
    """[CLS; W_1 tokens_1 + e_1; W_2 tokens_2 + e_2; ...] -> TransformerEncoder -> CLS state.

    Self-attention over the joint sequence lets every token attend within and across modalities
    (single-stream, like VisualBERT). e_m is a learned modality-type embedding so attention can
    tell the modalities apart; a modality without tokens enters as its pooled vector, one token.
    src_key_padding_mask hides padded tokens and every token of an absent modality; CLS is always
    real, so a row with nothing present still has something to attend to.
    layers (2), heads (4): encoder size; pre-norm, feed-forward width 2 * dim.
    """

    reads_tokens = True

    def __init__(self, *, in_dims: dict[str, int], dim: int = 256, dropout: float = 0.1,
                 layers: int = 2, heads: int = 4):
        super().__init__(in_dims=in_dims, dim=dim, dropout=dropout)
        check_heads(dim, heads, "transformer")
        self.proj = per_modality(in_dims, lambda d: nn.Linear(d, dim))
        self.type_embedding = nn.ParameterDict(
            {m: nn.Parameter(torch.randn(dim) * 0.02) for m in self.modalities})
        self.cls = nn.Parameter(torch.randn(dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        # norm_first: the final LayerNorm is not applied by the layers, so the encoder adds one.
        self.encoder = nn.TransformerEncoder(
            layer, layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False)
        self.out_dim = dim

    def forward(self, feats: dict[str, Features]) -> Tensor:
        inputs = self.inputs(feats)
        batch = inputs[self.modalities[0]].batch_size
        sequence = [self.cls.expand(batch, 1, -1)]
        real = [torch.ones(batch, 1, dtype=torch.bool, device=self.cls.device)]
        for m in self.modalities:
            tokens, mask = as_tokens(inputs[m])
            sequence.append(self.proj[m](tokens) + self.type_embedding[m])
            real.append(mask)
        states = self.encoder(torch.cat(sequence, dim=1), src_key_padding_mask=~torch.cat(real, dim=1))
        return states[:, 0]
