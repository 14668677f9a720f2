"""What a search returns."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SearchResult:
    """Top-k neighbours of each query, best first.

    scores: (queries, k) float32 cosine similarities; -inf where fewer than k vectors matched.
    ids:    (queries, k) int64 ids given by `VectorIndex.add`; -1 pads where fewer matched.
    """

    scores: np.ndarray
    ids: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)
