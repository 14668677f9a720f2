"""StoredFeatures: a frozen encoder's features of a split's unique inputs, left in the cache's shards.

A split keeps, per unique input, only where its features lie (shard, row: 8 bytes); a batch reads
its own rows and pads its tokens to its own longest input. So memory does not grow with the table:
the 167k images of a million-row VQA table, EfficientNet-Lite0 at 64 px (2x2 region tokens), are
4 GB on disk and one batch in memory.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from ..features import Features
from .shards import Shard


class StoredFeatures:
    """Like `Features` over the unique inputs, but `select(index)` reads the rows it returns, and
    `pooled` / `tokens` / `mask` read every input on first use (small sets: alignment heads, tests)."""

    def __init__(self, paths: list[Path], shard: np.ndarray, row: np.ndarray, tokens: bool):
        self.paths = paths            # the shard files
        self.shard = shard            # (N,) int32: input -> position in `paths`
        self.row = row                # (N,) int32: input -> row in its shard
        self.with_tokens = tokens     # whether batches carry tokens
        self._shards: dict[int, Shard] = {}
        self._all: Features | None = None

    def __len__(self) -> int:
        return len(self.shard)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_shards": {}, "_all": None}  # re-read in a spawned DataLoader worker

    def _open(self, number: int) -> Shard:
        if number not in self._shards:
            self._shards[number] = Shard(self.paths[number])
        return self._shards[number]

    @property
    def dim(self) -> int:
        return self._open(int(self.shard[0])).dim

    def select(self, index: Tensor) -> Features:
        """Features of inputs `index` (repeats allowed), tokens padded to this selection's longest."""
        unique, inverse = np.unique(index.numpy(), return_inverse=True)
        inverse = torch.from_numpy(inverse.reshape(-1))
        located = self._locate(unique)
        pooled = torch.from_numpy(self._pooled(located))[inverse]
        if not (self.with_tokens and located and located[0][0].has_tokens):
            return Features(pooled=pooled)
        tokens, mask = self._tokens(located)
        return Features(pooled=pooled, tokens=torch.from_numpy(tokens)[inverse], mask=torch.from_numpy(mask)[inverse])

    def _locate(self, inputs: np.ndarray) -> list[tuple[Shard, int]]:
        return [(self._open(s), r) for s, r in zip(self.shard[inputs].tolist(), self.row[inputs].tolist())]

    def _pooled(self, located: list[tuple[Shard, int]]) -> np.ndarray:
        pooled = np.empty((len(located), self.dim), np.float32)
        for out, (shard, row) in zip(pooled, located):
            shard.read_pooled(row, out)
        return pooled

    def _tokens(self, located: list[tuple[Shard, int]]) -> tuple[np.ndarray, np.ndarray]:
        lengths = [shard.length(row) for shard, row in located]
        tokens = np.zeros((len(located), max(lengths), self.dim), np.float32)
        mask = np.zeros((len(located), max(lengths)), bool)
        for i, ((shard, row), length) in enumerate(zip(located, lengths)):
            shard.read_tokens(row, tokens[i, :length])
            mask[i, :length] = True
        return tokens, mask

    def load(self) -> Features:
        """Every input's features in memory (small sets; a whole split only where it must be)."""
        return self.select(torch.arange(len(self)))

    def _every(self) -> Features:
        if self._all is None:
            self._all = self.load()
        return self._all

    @property
    def pooled(self) -> Tensor:
        return self._every().pooled

    @property
    def tokens(self) -> Tensor | None:
        return self._every().tokens

    @property
    def mask(self) -> Tensor | None:
        return self._every().mask

    def pooled_chunks(self, size: int = 4096) -> Iterator[Tensor]:
        """The pooled vectors, `size` inputs at a time (statistics over a split in bounded memory)."""
        for first in range(0, len(self), size):
            yield torch.from_numpy(self._pooled(self._locate(np.arange(first, min(first + size, len(self))))))
