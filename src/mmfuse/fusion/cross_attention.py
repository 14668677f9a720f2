"""Cross-attention: target tokens (default text) attend over context tokens (default: every other
modality's tokens — image regions, audio frames)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..features import Features, as_tokens
from .base import CrossAttentionStack, TargetContextFusion, check_heads, register_fusion


@register_fusion("cross_attention")
class CrossAttentionFusion(TargetContextFusion):
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
                 target: str = "text", context: str | list[str] | None = None, layers: int = 1, heads: int = 4,
                 pool: str = "mean"):
        check_heads(dim, heads, "cross_attention")
        super().__init__(in_dims=in_dims, dim=dim, dropout=dropout, target=target, context=context, pool=pool)
        if self.target is not None:
            self.target_proj = nn.Linear(in_dims[self.target], dim)
            self.blocks = CrossAttentionStack(dim, heads, layers, dropout)
        # One projection per context modality; their tokens are attended together.
        self.context_proj = nn.ModuleDict({m: nn.Linear(in_dims[m], dim) for m in self.contexts})

    def fuse(self, tokens: Tensor, mask: Tensor, ctx: dict[str, Features]) -> Tensor:
        if not ctx:
            return self.blocks(self.target_proj(tokens))
        parts = [as_tokens(f) for f in ctx.values()]
        ctx_tokens = torch.cat([self.context_proj[m](t) for m, (t, _) in zip(ctx, parts)], dim=1)
        ctx_mask = torch.cat([k for _, k in parts], dim=1)
        return self.blocks(self.target_proj(tokens), ctx_tokens, ctx_mask)
