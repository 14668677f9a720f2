"""Turn a manifest frame (one row per good row) into a TableDataset for a model.

Frozen encoders are read from / written to the feature cache and their features left on disk
(a batch reads its rows). Trainable ones get their inputs prepared (decoded, resized pixels; token
ids) once per unique input and kept in memory when they fit in `prepared_memory_mb`; above it each
batch prepares its own inputs when it is gathered (in the DataLoader workers), so memory does not
grow with the table.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .data.batching import PREPARE_CHUNK, ModalityColumn, TableDataset, unique_index
from .encoders import Encoder
from .encoders.base import cat_prepared
from .encoders.cache import FeatureCache
from .errors import DataError, brief
from .modalities import MODALITIES, group_modality
from .tasks import create_task

log = logging.getLogger(__name__)
PREPARED_MEMORY_MB = 512  # the default of train.prepared_memory_mb (config.py says why)


class Loader:
    """Raw values (paths, texts) -> what the modality's encoder prepares (decoded inputs).
    A class, not a closure, so a spawned DataLoader worker can receive it."""

    def __init__(self, modality: str, data: Any):
        self.modality, self.data = modality, data

    def __call__(self, values: list[Any]) -> list[Any]:
        return MODALITIES[self.modality].load(values, self.data)


def loader(modality: str, data: Any) -> Loader:
    return Loader(modality, data)


class Noisy:
    """A loader whose decoded inputs `change(item, key)` alters (robustness curves)."""

    def __init__(self, load: Callable[[list[Any]], list[Any]], change: Callable[[Any, str], Any]):
        self.load, self.change = load, change

    def __call__(self, values: list[Any]) -> list[Any]:
        return [self.change(item, str(value)) for item, value in zip(self.load(values), values)]


def noisy(load, change: Callable[[Any, str], Any]) -> Noisy:
    return Noisy(load, change)


class PrepareBatch:
    """A batch's raw unique inputs -> encoder inputs, when the batch is gathered. The manifest check
    decoded every file once, so a failure here is a file changed since: the error names it."""

    def __init__(self, encoder: Encoder, load: Callable[[list[Any]], list[Any]]):
        self.encoder, self.load = encoder, load

    def __call__(self, values: list[Any]) -> dict[str, Tensor]:
        try:
            return self.encoder.prepare(self.load(values))
        except Exception as error:  # noqa: BLE001 - find the input behind it, then say which
            for value in values:
                try:
                    self.load([value])
                except Exception as one:  # noqa: BLE001
                    raise DataError(f"{self.encoder.modality} {value}: cannot be read any more ({brief(one)}); it "
                                    "was readable when the table was checked: was it changed or removed?") from None
            raise error


def prepare_all(encoder: Encoder, values: list[Any], load, budget_mb: float = float("inf")) -> dict[str, Tensor] | None:
    """encoder.prepare over every unique input, in chunks, padded to one table; None when the
    first chunk says the table would take more than `budget_mb`."""
    parts = []
    for first in range(0, len(values), PREPARE_CHUNK):
        parts.append(encoder.prepare(load(values[first : first + PREPARE_CHUNK])))
        if first == 0:
            per_input = sum(t.nbytes for t in parts[0].values()) / min(PREPARE_CHUNK, len(values))
            if per_input * len(values) > budget_mb * 2**20:
                return None
    return cat_prepared(parts)


def cache_variant(perturb: dict[str, Callable], modality: str) -> str | None | bool:
    """None: clean inputs; a name: a cacheable perturbation; False: not cacheable."""
    if modality not in perturb:
        return None
    return getattr(perturb[modality], "cache_name", False)


def build_dataset(frame: pd.DataFrame, encoders: dict[str, Encoder], *, task: str, labels: list[str],
                  data: Any, cache: FeatureCache | None, group_by_image: bool,
                  device: str | torch.device = "cpu",
                  perturb: dict[str, Callable[[Any, str], Any]] | None = None,
                  pooled_only: set[str] | frozenset[str] = frozenset(),
                  prepared_memory_mb: float = PREPARED_MEMORY_MB) -> TableDataset:
    """`perturb[modality](value, key)` alters decoded inputs (robustness curves). A perturbation
    with a `cache_name` is deterministic, so its features go to a cache variant of that name;
    any other perturbed modality bypasses the cache, whose keys are the clean inputs' content.
    `pooled_only`: modalities whose cached tokens the fusion never reads (not loaded).
    `prepared_memory_mb`: a trainable encoder's inputs are kept in memory up to this size, else
    prepared per batch. `cache`: a FeatureCache (its features stay on disk, a batch reads its
    rows), or anything with its `features` method (a server's in-memory FeatureLRU)."""
    columns = {}
    perturb = perturb or {}
    for modality, encoder in encoders.items():
        raw = frame[modality].tolist() if modality in frame else [None] * len(frame)
        raw = [None if (v is None or (isinstance(v, float) and np.isnan(v))) else v for v in raw]
        index, values = unique_index(raw)
        load = loader(modality, data)
        if modality in perturb:
            load = noisy(load, perturb[modality])
        column = ModalityColumn(index=index, values=values)
        if not values:
            pass  # every row lacks this modality: batches carry present=False only
        elif not encoder.trainable and cache is not None and cache_variant(perturb, modality) is not False:
            column.features = cache.features(encoder, values, load, device=device,
                                             variant=cache_variant(perturb, modality),
                                             tokens=modality not in pooled_only)
            stats = cache.last_stats
            log.info("%s features: %d computed, %d reused from cache, %.1fs", modality,
                     stats["computed"], stats["reused"], stats["seconds"])
        else:
            column.prepare = PrepareBatch(encoder, load)
            column.prepared = prepare_all(encoder, values, load, prepared_memory_mb)
            if column.prepared is None:
                log.info("%s: %d inputs decoded per batch (over train.prepared_memory_mb=%g in memory)",
                         modality, len(values), prepared_memory_mb)
        columns[modality] = column
    by = group_modality(frame) if group_by_image else None
    if by in columns:
        image_index = columns[by].index.numpy()
        # Rows without an image form their own groups, after the images.
        groups = np.where(image_index >= 0, image_index, image_index.max(initial=0) + 1 + np.arange(len(frame)))
    else:
        groups = np.arange(len(frame))
    labelled = "label" in frame and not frame["label"].isna().all()
    return TableDataset(columns, create_task(task).encode(frame["label"].tolist(), labels) if labelled else None, groups)
