"""The Fusion interface, its registry, and the building blocks the strategies share.

Every strategy takes `dict[modality, Features]` and returns a (B, out_dim) tensor. A modality that
is absent for a row (Features.present False) must not influence that row's output: its values are
undefined, so strategies mask them out instead of treating zero vectors as real input.

Shared pieces (so each strategy file holds only what makes it different):
  Fusion.inputs        checks and sanitises the input dict (absent rows / padded tokens -> 0)
  Fusion.roles         resolves target/context for the two-modality strategies
  per_modality, mlp    one small module per modality; a two-layer MLP
  MissingEmbedding     learned stand-in vectors for absent rows
  masked_softmax       softmax over the real entries only
  TokenPool            masked sum / mean / attention pooling of tokens (check_pool: its modes)
  CrossAttentionStack  pre-norm cross-attention blocks that never read absent context
  check_heads          heads must divide dim (a ConfigError, not a torch assertion)
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch
from torch import Tensor, nn

from ..activations import GELU
from ..errors import ConfigError
from ..features import Features, as_tokens
from ..registry import Registry

POOLS = ("sum", "mean", "attention")


class Fusion(nn.Module):
    """Base class. Subclasses set `out_dim` in __init__ and implement forward."""

    out_dim: int
    # Late (decision-level) fusion wants the classifier on top to be linear, so that
    # head(sum_m a_m g_m) == sum_m a_m head(g_m). The model reads this flag.
    wants_linear_head: bool = False

    def __init__(self, *, in_dims: dict[str, int], dim: int = 256, dropout: float = 0.1):
        super().__init__()
        if not in_dims:
            raise ConfigError("fusion: no modality configured (in_dims is empty)")
        self.modalities = sorted(in_dims)
        self.in_dims = dict(in_dims)
        self.dim = dim
        self.dropout = dropout

    def forward(self, feats: dict[str, Features]) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    # Whether the strategy reads tokens at all; pooled-only ones (concat, gated, ...) leave it off,
    # so a modality's cached tokens (hundreds of audio frames per row) are never loaded for them.
    reads_tokens: bool = False

    def token_modalities(self) -> set[str]:
        """The modalities whose tokens this strategy reads (the others' cached tokens are not loaded)."""
        return set(self.modalities) if self.reads_tokens else set()

    def modality_weights(self) -> dict[str, float] | None:
        """Learned per-modality weights where the strategy has them (late, weighted_sum...)."""
        return None

    # -- helpers for subclasses ------------------------------------------------------------

    def inputs(self, feats: dict[str, Features]) -> dict[str, Features]:
        """Every configured modality's Features, safe to compute on.

        A configured modality missing from `feats` counts as absent on every row. Values on absent
        rows and padded tokens are replaced by exact zeros: strategies still mask them explicitly,
        this only guarantees that garbage there (NaN, huge values) cannot leak through a
        `0 * value` in the forward pass or into weight gradients in the backward pass.
        """
        unknown = sorted(set(feats) - set(self.modalities))
        if unknown:
            raise ValueError(f"fusion got modalities {unknown} it was not built for {self.modalities}")
        if not feats:
            raise ValueError("fusion got no modality at all")
        ref = next(iter(feats.values()))
        batch, device = ref.batch_size, ref.pooled.device
        out = {}
        for m in self.modalities:
            f = feats.get(m)
            if f is None:
                zeros = torch.zeros(batch, self.in_dims[m], device=device, dtype=ref.pooled.dtype)
                out[m] = Features(zeros, present=torch.zeros(batch, dtype=torch.bool, device=device))
                continue
            if f.dim != self.in_dims[m]:
                raise ValueError(f"fusion: modality {m!r} has width {f.dim}, built for {self.in_dims[m]}")
            tokens = None if f.tokens is None else f.tokens.masked_fill(~f.token_mask()[..., None], 0.0)
            pooled = f.pooled.masked_fill(~f.present[:, None], 0.0)
            out[m] = Features(pooled, tokens, f.mask, f.present)
        return out

    def present(self, inputs: dict[str, Features]) -> Tensor:
        """(B, M) bool, columns in `self.modalities` order."""
        return torch.stack([inputs[m].present for m in self.modalities], dim=1)

    def roles(self, target: str, context: str | list[str] | None) -> tuple[str | None, list[str]]:
        """For strategies with a target and context modalities: the target (None if not configured)
        and the configured context modalities. context None: every configured modality but the target.

        A configured modality with no role would be silently ignored, so it is an error.
        """
        name = type(self).__name__
        contexts = [m for m in self.modalities if m != target] if context is None else \
            ([context] if isinstance(context, str) else list(context))
        if target in contexts:
            raise ConfigError(f"{name}: {target!r} is both the target and a context")
        extra = [m for m in self.modalities if m != target and m not in contexts]
        if extra:
            raise ConfigError(
                f"{name} fuses two roles (target={target!r}, context={contexts!r}) but modality "
                f"{extra[0]!r} has none; set options target/context, or use a fusion that takes "
                f"any number of modalities (concat, attention, gated, transformer, mult...)")
        if target not in self.in_dims and len(self.modalities) > 1:
            raise ConfigError(f"{name}: target {target!r} is not a configured modality "
                              f"({', '.join(self.modalities)}); set fusion.options.target")
        return (target if target in self.in_dims else None, [m for m in contexts if m in self.in_dims])


def per_modality(in_dims: dict[str, int], build: Callable[[int], nn.Module]) -> nn.ModuleDict:
    """One module per modality, built from its input width."""
    return nn.ModuleDict({m: build(d) for m, d in sorted(in_dims.items())})


def mlp(in_dim: int, hidden: int, out_dim: int, dropout: float = 0.0) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim))


class MissingEmbedding(nn.Module):
    """A learned vector per key that stands in for an absent row (rather than zeros posing as data)."""

    def __init__(self, dims: dict[str, int]):
        super().__init__()
        self.vectors = nn.ParameterDict({k: nn.Parameter(torch.randn(d) * 0.02) for k, d in dims.items()})

    def forward(self, key: str, x: Tensor, present: Tensor) -> Tensor:
        """x (B, D) with rows where `present` is False replaced by the learned vector of `key`."""
        return torch.where(present[:, None], x, self.vectors[key].to(x.dtype))


def masked_softmax(logits: Tensor, mask: Tensor, dim: int = -1) -> Tensor:
    """Softmax over entries where `mask` (broadcastable) is True; masked entries get exactly 0.

    A slice with no real entry gives all zeros rather than NaN.
    """
    mask = mask.expand_as(logits)
    weights = torch.softmax(logits.masked_fill(~mask, torch.finfo(logits.dtype).min), dim=dim)
    return weights * mask


def check_pool(mode: str) -> None:
    if mode not in POOLS:
        raise ConfigError(f"pool={mode!r}; allowed: {', '.join(POOLS)}")


def check_heads(dim: int, heads: int, name: str) -> None:
    if heads < 1 or dim % heads:
        raise ConfigError(f"{name}: heads={heads} must be >= 1 and divide dim={dim}")


class TokenPool(nn.Module):
    """Pools (B, T, D) tokens over the real ones (mask True) to (B, D).

    sum: keeps "how many" information (counting needs it); mean: size-independent;
    attention: a learned score per token, softmax over real tokens, weighted sum.
    A row with no real token gives zeros; callers treat such rows as absent.
    """

    def __init__(self, dim: int, mode: str = "mean"):
        super().__init__()
        check_pool(mode)
        self.mode = mode
        self.score = nn.Linear(dim, 1) if mode == "attention" else None

    def forward(self, tokens: Tensor, mask: Tensor) -> Tensor:
        tokens = tokens.masked_fill(~mask[..., None], 0.0)
        if self.mode == "sum":
            return tokens.sum(1)
        if self.mode == "mean":
            return tokens.sum(1) / mask.sum(1, keepdim=True).clamp_min(1).to(tokens.dtype)
        weights = masked_softmax(self.score(tokens).squeeze(-1), mask)
        return torch.einsum("bt,btd->bd", weights, tokens)


class TargetContextFusion(Fusion):
    """Shared skeleton of the two-role strategies (film, cross_attention).

    The target modality's tokens are processed in the light of the context modalities (by default
    every other configured one: text and audio both condition the image), then pooled.
    Subclasses build their own layers in `build(dim, ...)` and implement `fuse(tokens, mask, ctx)`.
    A row without the target is the mean of an MLP per present context (it never reads target
    values); with no context configured, a learned "missing" vector.
    """

    reads_tokens = True  # the target's tokens, and (cross_attention) the contexts' as well

    def __init__(self, *, in_dims: dict[str, int], dim: int, dropout: float, target: str,
                 context: str | list[str] | None, pool: str):
        super().__init__(in_dims=in_dims, dim=dim, dropout=dropout)
        self.target, self.contexts = self.roles(target, context)
        check_pool(pool)
        if self.target is not None:
            self.pool = TokenPool(dim, pool)
        if self.contexts:
            self.context_only = nn.ModuleDict({m: mlp(in_dims[m], dim, dim) for m in self.contexts})
        else:
            self.missing = MissingEmbedding({"target": dim})
        self.drop = nn.Dropout(dropout)
        self.out_dim = dim

    def fuse(self, tokens: Tensor, mask: Tensor, ctx: dict[str, Features]) -> Tensor:  # pragma: no cover
        """(B, T, D_target) target tokens -> (B, T, dim) processed tokens."""
        raise NotImplementedError

    def without_target(self, ctx: dict[str, Features]) -> Tensor:
        """Mean over the present contexts of their MLPs (zeros on a row with none)."""
        outs = [self.context_only[m](f.pooled) * f.present[:, None] for m, f in ctx.items()]
        count = torch.stack([f.present for f in ctx.values()], 1).sum(1, keepdim=True).clamp_min(1)
        return torch.stack(outs).sum(0) / count

    def forward(self, feats: dict[str, Features]) -> Tensor:
        inputs = self.inputs(feats)
        ctx = {m: inputs[m] for m in self.contexts}
        if self.target is None:
            return self.drop(self.without_target(ctx))
        target = inputs[self.target]
        tokens, mask = as_tokens(target)
        z = self.pool(self.fuse(tokens, mask, ctx), mask)
        if ctx:
            z = torch.where(target.present[:, None], z, self.without_target(ctx))
        else:
            z = self.missing("target", z, target.present)
        return self.drop(z)


class CrossAttentionBlock(nn.Module):
    """Pre-norm transformer block: x += CrossAttn(LN x, LN ctx); x += MLP(LN x).

    Padded / absent context tokens are hidden by key_padding_mask. A row with no real context token
    keeps x unchanged in the attention step (torch.where, so it cannot depend on context values).
    """

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm_x = nn.LayerNorm(dim)
        self.norm_ctx = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 2 * dim), GELU(), nn.Dropout(dropout),
            nn.Linear(2 * dim, dim), nn.Dropout(dropout))

    def forward(self, x: Tensor, ctx: Tensor | None = None, ctx_mask: Tensor | None = None) -> Tensor:
        if ctx is not None:
            has_ctx = ctx_mask.any(1)
            # A fully masked row would make the attention softmax NaN: let it see its (zeroed)
            # tokens instead, and throw its update away below.
            ignore = ~(ctx_mask | ~has_ctx[:, None])
            kv = self.norm_ctx(ctx)
            update, _ = self.attn(self.norm_x(x), kv, kv, key_padding_mask=ignore, need_weights=False)
            x = torch.where(has_ctx[:, None, None], x + update, x)
        return x + self.mlp(self.norm_mlp(x))


class CrossAttentionStack(nn.Module):
    """`layers` CrossAttentionBlocks and a final LayerNorm (pre-norm blocks need one at the end)."""

    def __init__(self, dim: int, heads: int, layers: int, dropout: float):
        super().__init__()
        self.blocks = nn.ModuleList(CrossAttentionBlock(dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, ctx: Tensor | None = None, ctx_mask: Tensor | None = None) -> Tensor:
        for block in self.blocks:
            x = block(x, ctx, ctx_mask)
        return self.norm(x)


# -- registry ------------------------------------------------------------------------------

FUSIONS: Registry[Fusion] = Registry("fusion")
register_fusion = FUSIONS.register


def _option_names(builder: Callable[..., Fusion]) -> set[str] | None:
    """Keyword options a builder accepts (None: it takes **kwargs, so anything goes)."""
    params = inspect.signature(builder).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.name not in ("self", "in_dims")}


def create_fusion(name: str, *, in_dims: dict[str, int], **options) -> Fusion:
    builder = FUSIONS.get(name)
    accepted = _option_names(builder)
    unknown = sorted(set(options) - accepted) if accepted is not None else []
    if unknown:
        raise ConfigError(f"fusion {name!r}: unknown option(s) {', '.join(unknown)}; "
                          f"accepted: {', '.join(sorted(accepted))}")
    return builder(in_dims=in_dims, **options)


def available_fusions() -> list[str]:
    return FUSIONS.names()
