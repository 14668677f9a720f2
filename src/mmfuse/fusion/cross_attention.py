"""Cross-attention: target tokens (default text) attend over context tokens (default image regions)."""
from __future__ import annotations

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
                 target: str = "text", context: str = "image", layers: int = 1, heads: int = 4,
                 pool: str = "mean"):
        check_heads(dim, heads, "cross_attention")
        super().__init__(in_dims=in_dims, dim=dim, dropout=dropout, target=target, context=context, pool=pool)
        if self.target is not None:
            self.target_proj = nn.Linear(in_dims[self.target], dim)
            self.blocks = CrossAttentionStack(dim, heads, layers, dropout)
        if self.context is not None:
            self.context_proj = nn.Linear(in_dims[self.context], dim)

    def fuse(self, tokens: Tensor, mask: Tensor, ctx: Features | None) -> Tensor:
        if ctx is None:
            return self.blocks(self.target_proj(tokens))
        ctx_tokens, ctx_mask = as_tokens(ctx)
        return self.blocks(self.target_proj(tokens), self.context_proj(ctx_tokens), ctx_mask)
