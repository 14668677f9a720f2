"""FeatureLRU: frozen-encoder features of recent inputs, kept in memory, bounded in bytes.

A served request is too small for the on-disk FeatureCache (reading shard headers costs more
than encoding a few rows), so `Predictor.predict_scores` encodes small requests directly, and
the frozen MiniLM ran on every batch's questions although easy-VQA has ~100 distinct ones.
A frozen encoder gives the same output for the same input, so its features can be kept by the
input's content hash (`mmfuse.encoders.cache.content_hash`: text characters, image file bytes)
under the encoder's fingerprint, exactly like the disk cache; features are stored per input the
way the disk cache stores them (pooled + the real tokens), so a batch sees the same tensors
whichever cache served it. Same interface as FeatureCache.features, so `build_dataset` takes either.
Used from the model thread only, so it needs no lock.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Callable

import torch

from ..encoders.base import Encoder
from ..encoders.cache import Entry, content_hash, encode_inputs, stack_inputs
from ..features import Features

DEFAULT_MAX_BYTES = 64 * 2**20


class FeatureLRU:
    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[tuple[str, str], Entry] = OrderedDict()
        self.last_stats: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._items)

    def features(self, encoder: Encoder, values: list[Any], load: Callable[[list[Any]], list[Any]],
                 batch_size: int = 64, device: str | torch.device = "cpu", variant: str | None = None,
                 tokens: bool = True) -> Features:
        """Features for `values` (unique inputs), running the encoder only on the ones not held
        (tokens=False: the pooled vectors only, as FeatureCache.features)."""
        start = time.perf_counter()
        scope = f"{encoder.modality}-{encoder.fingerprint()}-{variant}"
        keys = [(scope, content_hash(encoder.modality, v)) for v in values]
        missing = [(k, v) for k, v in dict(zip(keys, values)).items() if k not in self._items]
        found = {k: self._items[k] for k in keys if k in self._items}
        for k in found:
            self._items.move_to_end(k)
        if missing:  # (encode_inputs walks every module of the encoder even for nothing to do)
            found |= encode_inputs(encoder, missing, load, batch_size, device)
        for key, entry in found.items():
            self._remember(key, entry)
        self.last_stats = {"computed": len(missing), "reused": len(set(keys)) - len(missing),
                           "seconds": time.perf_counter() - start}
        if not tokens:
            found = {k: (pooled, None) for k, (pooled, _) in found.items()}
        return stack_inputs(keys, found)

    def _remember(self, key: tuple[str, str], entry: Entry) -> None:
        if key in self._items:
            return
        self._items[key] = entry
        self.bytes += _size(entry)
        while self.bytes > self.max_bytes and self._items:
            _, dropped = self._items.popitem(last=False)  # the least recently used
            self.bytes -= _size(dropped)


def _size(entry: Entry) -> int:
    return sum(t.numel() * t.element_size() for t in entry if t is not None)
