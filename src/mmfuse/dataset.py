"""Turn a manifest frame (one row per good row) into a TableDataset for a model.

Frozen encoders are read from / written to the feature cache; trainable ones get their inputs
prepared once per unique input (decoded, resized pixels; token ids) and kept in memory.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .data.batching import ModalityColumn, TableDataset, unique_index
from .modalities import MODALITIES, group_modality
from .encoders import Encoder
from .encoders.cache import FeatureCache
from .tasks import create_task

log = logging.getLogger(__name__)
PREPARE_CHUNK = 512


def loader(modality: str, data: Any) -> Callable[[list[Any]], list[Any]]:
    """Raw values (paths, texts) -> what the modality's encoder prepares (decoded inputs)."""
    spec = MODALITIES[modality]
    return lambda values: spec.load(values, data)


def noisy(load, change: Callable[[Any, str], Any]):
    def load_noisy(values: list[Any]) -> list[Any]:
        return [change(item, str(value)) for item, value in zip(load(values), values)]

    return load_noisy


def prepare_all(encoder: Encoder, values: list[Any], load) -> dict[str, Tensor]:
    """encoder.prepare over every unique input, in chunks, padded to one table."""
    parts = [encoder.prepare(load(values[i : i + PREPARE_CHUNK])) for i in range(0, len(values), PREPARE_CHUNK)]
    if not parts:
        return {}
    table = {}
    for key in parts[0]:
        pieces = [p[key] for p in parts]
        if pieces[0].dim() == 2:  # token ids / masks: pad to the widest chunk
            width = max(p.shape[1] for p in pieces)
            pieces = [torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in pieces]
        table[key] = torch.cat(pieces)
    return table


def cache_variant(perturb: dict[str, Callable], modality: str) -> str | None | bool:
    """None: clean inputs; a name: a cacheable perturbation; False: not cacheable."""
    if modality not in perturb:
        return None
    return getattr(perturb[modality], "cache_name", False)


def build_dataset(frame: pd.DataFrame, encoders: dict[str, Encoder], *, task: str, labels: list[str],
                  data: Any, cache: FeatureCache | None, group_by_image: bool,
                  device: str | torch.device = "cpu",
                  perturb: dict[str, Callable[[Any, str], Any]] | None = None,
                  pooled_only: set[str] | frozenset[str] = frozenset()) -> TableDataset:
    """`perturb[modality](value, key)` alters decoded inputs (robustness curves). A perturbation
    with a `cache_name` is deterministic, so its features go to a cache variant of that name;
    any other perturbed modality bypasses the cache, whose keys are the clean inputs' content.
    `pooled_only`: modalities whose cached tokens the fusion never reads (not loaded)."""
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
            column.prepared = prepare_all(encoder, values, load)
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
