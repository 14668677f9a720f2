"""Gated Multimodal Unit (GMU, Arevalo et al. 2017): a learned per-feature gate chooses modalities."""
from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from ..features import Features
from .base import Fusion, MissingEmbedding, masked_softmax, per_modality, register_fusion


@register_fusion("gated")
class GatedFusion(Fusion):
    """h_m = tanh(W_m x_m); z = softmax over present m of (W_z [x_1; x_2; ...])_m; out = sum_m z_m h_m.

    With two modalities a softmax over two gate logits is sigmoid(difference), i.e. the original
    GMU's z h_1 + (1 - z) h_2; the softmax form extends it to any number of modalities.
    The gate is per feature and sees all inputs, so it can trust the image for colour and the text
    for the question type. An absent modality's gate is 0 and the others renormalise; in the gate
    input its x_m is a learned "missing" vector, so the gate never reads absent values.
    """

    def __init__(self, *, in_dims: dict[str, int], dim: int = 256, dropout: float = 0.1):
        super().__init__(in_dims=in_dims, dim=dim, dropout=dropout)
        self.hidden = per_modality(in_dims, lambda d: nn.Linear(d, dim))
        # Gate-input stand-ins for absent modalities. With two modalities one absent leaves a single
        # gate, which is 1 whatever its input, so they matter (and exist) from three modalities up.
        self.missing = MissingEmbedding(in_dims) if len(in_dims) > 2 else None
        self.gate = nn.Linear(sum(in_dims.values()), len(self.modalities) * dim)
        self.drop = nn.Dropout(dropout)
        self.out_dim = dim

    def forward(self, feats: dict[str, Features]) -> Tensor:
        inputs = self.inputs(feats)
        present = self.present(inputs)  # (B, M)
        h = torch.stack([torch.tanh(self.hidden[m](inputs[m].pooled)) for m in self.modalities], dim=1)
        gate_in = torch.cat([self.gate_input(m, inputs[m]) for m in self.modalities], dim=-1)
        logits = rearrange(self.gate(gate_in), "b (m d) -> b m d", m=len(self.modalities))
        z = masked_softmax(logits, present[:, :, None], dim=1)  # softmax over modalities, per feature
        return self.drop((z * h).sum(1))

    def gate_input(self, modality: str, f: Features) -> Tensor:
        return f.pooled if self.missing is None else self.missing(modality, f.pooled, f.present)
