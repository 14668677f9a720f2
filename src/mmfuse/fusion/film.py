"""FiLM (Perez et al. 2018): the context modality modulates every token of the target modality.

The default model. With target=image and the other modalities as context: the question (written,
spoken, or both: their scales and shifts add up) scales and shifts each image region's features, a per-token MLP processes the modulated regions, and the regions are pooled.
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
    context: the modulating modalities (their pooled vectors; default: every other configured
             one). Each has its own gamma/beta MLP; the present ones' outputs are summed.
    pool:    "sum" (default), "mean" or "attention" over the real target tokens

    Every context absent on a row: gamma = beta = 0, the plain target path.
    Target absent on a row: the output is an MLP of the context alone (see TargetContextFusion).
    """

    def __init__(self, *, in_dims: dict[str, int], dim: int = 256, dropout: float = 0.1,
                 target: str = "image", context: str | list[str] | None = None, pool: str = "sum"):
        super().__init__(in_dims=in_dims, dim=dim, dropout=dropout, target=target, context=context, pool=pool)
        if self.target is not None:
            self.token_proj = nn.Linear(in_dims[self.target], dim)
            self.token_mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU())
        # gamma and beta from one MLP per context; 1 + gamma so that gamma = 0 means "no modulation".
        self.film = nn.ModuleDict({m: mlp(in_dims[m], dim, 2 * dim) for m in self.contexts})

    def token_modalities(self) -> set[str]:
        return {self.target} if self.target is not None else set()  # contexts: pooled vectors only

    def fuse(self, tokens: Tensor, mask: Tensor, ctx: dict[str, Features]) -> Tensor:
        x = self.token_proj(tokens)  # (B, T, dim)
        if ctx:
            # an absent context adds exactly 0 (torch.where: its values are never read)
            film = sum(torch.where(f.present[:, None], self.film[m](f.pooled), 0.0) for m, f in ctx.items())
            gamma, beta = film.chunk(2, dim=-1)
            x = x * (1 + gamma[:, None]) + beta[:, None]
        return self.token_mlp(torch.relu(x))
