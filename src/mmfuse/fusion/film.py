"""FiLM (Perez et al. 2018): the context modality modulates every token of the target modality.

The default model. With target=image, context=text: the question scales and shifts each image
region's features, a per-token MLP processes the modulated regions, and the regions are pooled.
Pooling after the modulation is the point: the question can pick out regions ("circles") and a sum
over regions can then count them. Measured on easy-VQA with 4x4 CNN tokens and sum pooling: 99.97%;
modulating only the pooled image vector reached 63% on a counting task.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..features import Features
from .base import TargetContextFusion, mlp, register_fusion


@register_fusion("film")
class FiLMFusion(TargetContextFusion):
    """Per target token: relu(W x * (1 + gamma(c)) + beta(c)), token MLP, pool, dropout.

    target:  the modulated modality (tokens, or its pooled vector as one token)
    context: the modulating modality (its pooled vector)
    pool:    "sum" (default), "mean" or "attention" over the real target tokens

    Context absent on a row: gamma = beta = 0, the plain target path.
    Target absent on a row: the output is an MLP of the context alone (see TargetContextFusion).
    """

    def __init__(self, *, in_dims: dict[str, int], dim: int = 256, dropout: float = 0.1,
                 target: str = "image", context: str = "text", pool: str = "sum"):
        super().__init__(in_dims=in_dims, dim=dim, dropout=dropout, target=target, context=context, pool=pool)
        if self.target is not None:
            self.token_proj = nn.Linear(in_dims[self.target], dim)
            self.token_mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU())
        if self.context is not None:
            # gamma and beta from one MLP; 1 + gamma so that gamma = 0 means "no modulation".
            self.film = mlp(in_dims[self.context], dim, 2 * dim)

    def fuse(self, tokens: Tensor, mask: Tensor, ctx: Features | None) -> Tensor:
        x = self.token_proj(tokens)  # (B, T, dim)
        if ctx is not None:
            gamma, beta = self.film(ctx.pooled).chunk(2, dim=-1)
            # no context on a row: gamma = beta = 0 exactly (torch.where: values never read)
            has_ctx = ctx.present[:, None]
            gamma = torch.where(has_ctx, gamma, torch.zeros_like(gamma))
            beta = torch.where(has_ctx, beta, torch.zeros_like(beta))
            x = x * (1 + gamma[:, None]) + beta[:, None]
        return self.token_mlp(torch.relu(x))
