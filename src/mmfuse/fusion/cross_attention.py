"""Cross-attention: target tokens (default text) attend over context tokens (default image regions)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..features import Features, as_tokens
from .base import (CrossAttentionStack, Fusion, MissingEmbedding, TokenPool, check_heads,
                   check_pool, mlp, register_fusion)


@register_fusion("cross_attention")
class CrossAttentionFusion(Fusion):
    """Each target token gathers what it needs from the context tokens (pre-norm cross-attention
    + MLP blocks, residual), then the target tokens are pooled over the real ones.

    Unlike the other two-role fusions the default roles are target="text", context="image":
    the question's words look up image regions, as in VQA co-attention models.
    layers: cross-attention blocks (1); heads: attention heads (4); pool: "mean" | "sum" | "attention".

    Padded and absent context tokens are never attended; a row with no context keeps its target
    tokens unchanged by attention. A row with no target: an MLP of the context pooled vector
    (with no context configured, a learned "missing" vector).
    """

    def __init__(self, *, in_dims: dict[str, int], dim: int = 256, dropout: float = 0.1,
                 target: str = "text", context: str = "image", layers: int = 1, heads: int = 4,
                 pool: str = "mean"):
        super().__init__(in_dims=in_dims, dim=dim, dropout=dropout)
        check_heads(dim, heads, "cross_attention")
        self.target, self.context = self.roles(target, context)
        if self.target is not None:
            self.target_proj = nn.Linear(in_dims[self.target], dim)
            self.blocks = CrossAttentionStack(dim, heads, layers, dropout)
            self.pool = TokenPool(dim, pool)
        else:
            check_pool(pool)
        if self.context is not None:
            self.context_proj = nn.Linear(in_dims[self.context], dim)
            self.context_only = mlp(in_dims[self.context], dim, dim)
        else:
            self.missing = MissingEmbedding({"target": dim})
        self.drop = nn.Dropout(dropout)
        self.out_dim = dim

    def forward(self, feats: dict[str, Features]) -> Tensor:
        inputs = self.inputs(feats)
        ctx = inputs[self.context] if self.context else None
        if self.target is None:
            return self.drop(self.context_only(ctx.pooled))

        target = inputs[self.target]
        tokens, mask = as_tokens(target)
        if ctx is not None:
            ctx_tokens, ctx_mask = as_tokens(ctx)
            x = self.blocks(self.target_proj(tokens), self.context_proj(ctx_tokens), ctx_mask)
        else:
            x = self.blocks(self.target_proj(tokens))
        z = self.pool(x, mask)

        if ctx is not None:
            z = torch.where(target.present[:, None], z, self.context_only(ctx.pooled))
        else:
            z = self.missing("target", z, target.present)
        return self.drop(z)
