"""Features: the one type passed from encoders to fusion.

Fusion never imports encoders and encoders never import fusion; both speak Features.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Features:
    """One modality, one batch.

    pooled:  (B, D)     one vector per row
    tokens:  (B, T, D)  image regions / text tokens / audio frames, or None
    mask:    (B, T)     True where a token is real, or None (all real)
    present: (B,)       False where the row lacks this modality; its values are then meaningless
                        and every fusion must ignore them (never treat zeros as real input)
    """

    pooled: Tensor
    tokens: Tensor | None = None
    mask: Tensor | None = None
    present: Tensor | None = None

    def __post_init__(self) -> None:
        if self.pooled.dim() != 2:
            raise ValueError(f"pooled must be (B, D), got {tuple(self.pooled.shape)}")
        batch = self.pooled.shape[0]
        if self.present is None:
            self.present = torch.ones(batch, dtype=torch.bool, device=self.pooled.device)
        if self.tokens is not None:
            if self.tokens.dim() != 3 or self.tokens.shape[0] != batch:
                raise ValueError(f"tokens must be (B, T, D) with B={batch}, got {tuple(self.tokens.shape)}")
            if self.tokens.shape[2] != self.pooled.shape[1]:
                raise ValueError("tokens and pooled must share their width D")
            if self.mask is None:
                self.mask = torch.ones(self.tokens.shape[:2], dtype=torch.bool, device=self.tokens.device)

    @property
    def batch_size(self) -> int:
        return self.pooled.shape[0]

    @property
    def dim(self) -> int:
        return self.pooled.shape[1]

    def token_mask(self) -> Tensor:
        """(B, T) mask that is also False for every token of an absent row."""
        assert self.tokens is not None and self.mask is not None
        return self.mask & self.present[:, None]

    def select(self, index: Tensor) -> "Features":
        """Rows `index` (used to expand features of unique inputs back to batch rows)."""
        return Features(
            pooled=self.pooled[index],
            tokens=None if self.tokens is None else self.tokens[index],
            mask=None if self.mask is None else self.mask[index],
            present=self.present[index],
        )

    def with_present(self, present: Tensor) -> "Features":
        return Features(self.pooled, self.tokens, self.mask, present & self.present)

    def to(self, device: torch.device | str) -> "Features":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Features(move(self.pooled), move(self.tokens), move(self.mask), move(self.present))


def as_tokens(feats: Features) -> tuple[Tensor, Tensor]:
    """(tokens, mask) of a modality, the pooled vector as one token when it has no tokens.

    The mask is False on absent rows, so attention never reads them.
    """
    if feats.tokens is None:
        return feats.pooled.unsqueeze(1), feats.present.unsqueeze(1)
    return feats.tokens, feats.token_mask()


def masked_mean(tokens: Tensor, mask: Tensor) -> Tensor:
    """Mean over real tokens; a row with no real token gives zeros (callers mask it as absent)."""
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)
