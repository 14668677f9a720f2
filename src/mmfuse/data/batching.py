"""Tensors for training and prediction: per-modality columns over unique inputs, and batches.

Each modality of a split is stored once per UNIQUE input (easy-VQA: 5,000 images under 48,000
questions, 107 distinct question strings) with a row -> unique index. A batch then either gathers
cached features (frozen encoder; read from the cache's shards when they are `StoredFeatures`) or
carries only the unique inputs it needs plus an inverse index (trainable encoder), so an image with
ten questions is encoded once per step. A trainable encoder's inputs are either prepared once for
the whole split (`prepared`, tables that fit in `train.prepared_memory_mb`) or per batch when it is
gathered (`prepare`: decoded in the DataLoader workers), so memory does not grow with the table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from ..encoders.base import cat_prepared, slice_prepared
from ..encoders.stored import StoredFeatures
from ..features import Features

PREPARE_CHUNK = 512


@dataclass
class ModalityColumn:
    """One modality of one split."""

    index: Tensor                      # (N,) row -> unique input, -1 where the row lacks it
    values: list[Any]                  # the unique raw inputs (image paths / texts)
    features: Features | StoredFeatures | None = None  # cached features over the uniques (frozen encoder)
    prepared: dict[str, Tensor] | None = None  # encoder inputs over the uniques, in memory (trainable encoder)
    prepare: Callable[[list[Any]], dict[str, Tensor]] | None = None  # or raw values -> inputs, per batch

    def all_features(self) -> Features | None:
        """The features of every unique input in memory (export; not for a table of any size)."""
        return self.features.load() if isinstance(self.features, StoredFeatures) else self.features

    def prepared_chunks(self, size: int = PREPARE_CHUNK) -> Iterator[dict[str, Tensor]]:
        """Encoder inputs of the unique inputs in order, `size` at a time."""
        for first in range(0, len(self.values), size):
            if self.prepared is not None:
                yield slice_prepared(self.prepared, slice(first, first + size))
            else:
                yield self.prepare(self.values[first : first + size])

    def prepared_table(self) -> dict[str, Tensor] | None:
        """Encoder inputs of every unique input, padded to one table (pruning, an ONNX tower)."""
        if self.prepared is not None or self.prepare is None:
            return self.prepared
        return cat_prepared(list(self.prepared_chunks()))


@dataclass
class ModalityBatch:
    present: Tensor                              # (B,)
    features: Features | None = None             # gathered cached features
    prepared: dict[str, Tensor] | None = None    # the batch's unique inputs
    inverse: Tensor | None = None                # (B,) row -> position in `prepared`


@dataclass
class Batch:
    rows: Tensor                       # (B,) row numbers in the split
    target: Tensor | None
    modalities: dict[str, ModalityBatch]

    @property
    def size(self) -> int:
        return self.rows.shape[0]


def unique_index(values: list[Any]) -> tuple[Tensor, list[Any]]:
    """Row -> unique position (-1 for None) and the unique values in first-seen order."""
    position: dict[Any, int] = {}
    # A list, then one tensor: item assignment into a tensor took 6 s for a million rows.
    codes = [-1 if value is None else position.setdefault(value, len(position)) for value in values]
    return torch.tensor(codes, dtype=torch.long), list(position)


def gather(column: ModalityColumn, rows: Tensor) -> ModalityBatch:
    index = column.index[rows]
    present = index >= 0
    if not present.any():
        return ModalityBatch(present=present)
    safe = torch.where(present, index, index[present][0])  # absent rows point at any real input
    if column.features is not None:
        return ModalityBatch(present=present, features=column.features.select(safe).with_present(present))
    unique, inverse = torch.unique(safe, return_inverse=True)
    if column.prepared is not None:
        prepared = slice_prepared(column.prepared, unique)
    else:  # decoded now: in a DataLoader worker when train.num_workers > 0
        prepared = column.prepare([column.values[i] for i in unique.tolist()])
    return ModalityBatch(present=present, prepared=prepared, inverse=inverse)


class TableDataset(Dataset):
    """A split as tensors. Indexed by a LIST of rows (one batch), so collation is vectorised."""

    def __init__(self, columns: dict[str, ModalityColumn], target: Tensor | None, groups: np.ndarray):
        self.columns = columns
        self.target = target
        self.groups = groups  # (N,) group id per row: the image, when batching by image

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, rows: list[int]) -> Batch:
        rows_t = torch.as_tensor(rows, dtype=torch.long)
        return Batch(
            rows=rows_t,
            target=None if self.target is None else self.target[rows_t],
            modalities={m: gather(c, rows_t) for m, c in self.columns.items()},
        )


class GroupBatchSampler(Sampler[list[int]]):
    """Batches of `groups_per_batch` groups (images) with all their rows.

    The order depends only on (seed, epoch), so a resumed run sees the same batches as an
    uninterrupted one. Under DDP `groups_per_batch` is the global batch: each rank takes every
    world-th group of every batch, so the steps (and the schedule) do not depend on the number of
    processes. Training batches (shuffle) are padded with a group of their own where a rank would
    get none, as every rank must take the same number of steps (DDP waits for all of them at each
    step: one extra step on one rank hangs the others); validation batches never repeat a row,
    so the metric summed over ranks is that of the whole split.
    """

    def __init__(self, groups: np.ndarray, groups_per_batch: int, *, shuffle: bool, seed: int = 0,
                 rank: int | None = 0, world: int | None = 1):
        self.groups_per_batch = groups_per_batch
        self.shuffle, self.seed, self.rank, self.world = shuffle, seed, rank, world
        self.epoch = 0
        # Group g's rows are order[bounds[g]:bounds[g + 1]]: two arrays, not one small array per
        # image (167k of them for a million rows).
        self.order = np.argsort(groups, kind="stable")
        _, starts = np.unique(groups[self.order], return_index=True)
        self.bounds = np.append(starts, len(self.order))
        self.count = len(starts)

    def shard(self) -> tuple[int, int]:
        """rank, world; None: this process's, read when iterated (ddp_spawn / ddp_fork pickle or
        fork the sampler before the workers know their rank)."""
        if self.rank is not None:
            return self.rank, self.world
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def members(self, group: int) -> np.ndarray:
        return self.order[self.bounds[group] : self.bounds[group + 1]]

    def __iter__(self) -> Iterator[list[int]]:
        # The epoch and rank are read now, when the iterator is made; the batches one at a time
        # (an epoch's row lists made up front cost ~36 bytes a row).
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.count)
        else:
            order = np.arange(self.count)
        return self._batches(order, *self.shard())

    def _batches(self, order: np.ndarray, rank: int, world: int) -> Iterator[list[int]]:
        for first in range(0, self.count, self.groups_per_batch):
            picked = order[first : first + self.groups_per_batch]
            mine = picked[rank::world]
            if not len(mine) and self.shuffle:
                mine = picked[rank % len(picked) :][:1]
            if len(mine):
                yield np.concatenate([self.members(g) for g in mine]).tolist()

    def __len__(self) -> int:
        full, last = divmod(self.count, self.groups_per_batch)
        sizes = [self.groups_per_batch] * full + ([last] if last else [])
        rank = self.shard()[0]
        return sum(1 for size in sizes if self.shuffle or rank < size)


def identity(batch: Batch) -> Batch:
    return batch


def make_loader(dataset: TableDataset, config: Any, *, shuffle: bool, rank: int | None = 0,
                world: int | None = 1) -> DataLoader:
    # batch_size counts groups: images when batching by image, else single rows (see build_dataset).
    sampler = GroupBatchSampler(dataset.groups, config.train.batch_size, shuffle=shuffle, seed=config.train.seed,
                                rank=rank, world=world)
    return DataLoader(dataset, sampler=sampler, batch_size=None, collate_fn=identity,
                      num_workers=config.train.num_workers, persistent_workers=config.train.num_workers > 0)
