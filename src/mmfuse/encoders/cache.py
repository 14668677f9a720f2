"""On-disk feature cache for frozen encoders.

A frozen encoder runs once per unique input, ever: the key is the input's content hash (file bytes
or text) under a folder named by the encoder's fingerprint (name + weights + preprocessing), so a
new weight, image size or tokenizer limit recomputes, and everything else is reused across epochs,
runs and configs. Shards are safetensors files (no pickle, layout in `shards.py`); an interrupted
extraction keeps the shards it finished. A split's features stay on disk (`StoredFeatures`): a
batch reads its own rows.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, Callable, Hashable

import numpy as np
import torch

from ..features import Features
from ..modalities import MODALITIES
from .base import Encoder
from .shards import Entry, read_keys, write_shard
from .stored import StoredFeatures

SHARD_ITEMS = 2048


def content_hash(modality: str, value: Any) -> str:
    """The hash of what the modality says an input's content is: a file's bytes (a renamed copy is
    the same input, an edited file a new one), a text's characters."""
    return hashlib.sha256(MODALITIES[modality].content(value)).hexdigest()[:32]


class FeatureCache:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.last_stats: dict[str, float] = {}

    def folder(self, encoder: Encoder, variant: str | None = None) -> Path:
        """`variant` names a deterministic change of the inputs (e.g. `gaussian-0.25-s0` noise)."""
        name = f"{encoder.modality}-{encoder.fingerprint()}"
        return self.root / (name if variant is None else f"{name}-{variant}")

    @staticmethod
    def _locate(folder: Path, wanted: set[str]) -> tuple[list[Path], dict[str, tuple[int, int]]]:
        """(shard files, key -> (file number, row)) for the `wanted` keys stored in `folder`.

        Reads each shard's header (its keys are one JSON string there): a million inputs are 490
        headers, located in 1.2 s (hashing their files takes longer), so no separate index, which
        could go stale."""
        paths: list[Path] = []
        where: dict[str, tuple[int, int]] = {}
        for path in sorted(folder.glob("*.safetensors")):
            paths.append(path)
            for row, key in enumerate(read_keys(path)):
                if key in wanted and key not in where:
                    where[key] = (len(paths) - 1, row)
        return paths, where

    def features(self, encoder: Encoder, values: list[Any], load: Callable[[list[Any]], list[Any]],
                 batch_size: int = 64, device: str | torch.device = "cpu", variant: str | None = None,
                 tokens: bool = True, encode: "EncodeFn | None" = None) -> StoredFeatures | Features:
        """Features for `values` (unique inputs), computing only the ones not on disk yet. They stay
        there: `select` (a batch) reads just its rows; `.pooled` / `.tokens` read every input.

        `load` turns raw values (paths) into what `encoder.prepare` takes (decoded images).
        tokens=False reads the pooled vectors only (the fusion reads no tokens of this modality:
        a clip's 100+ frames would only cost memory and gather time).
        `encode` computes the missing entries of one shard (default: `encode_inputs` in this
        process); another backend (a pool of Ray actors) plugs in here and the storage stays ours.
        """
        start = time.perf_counter()
        keys = [content_hash(encoder.modality, v) for v in values]
        folder = self.folder(encoder, variant)
        folder.mkdir(parents=True, exist_ok=True)
        paths, where = self._locate(folder, set(keys))
        missing = sorted({k: v for k, v in zip(keys, values) if k not in where}.items())
        for first in range(0, len(missing), SHARD_ITEMS):
            chunk = missing[first : first + SHARD_ITEMS]
            entries = (encode or encode_inputs)(encoder, chunk, load, batch_size, device)
            paths.append(write_shard(folder, [(key, entries[key]) for key, _ in chunk]))
            where.update({key: (len(paths) - 1, row) for row, (key, _) in enumerate(chunk)})
        self.last_stats = {"computed": len(missing), "reused": len(set(keys)) - len(missing),
                           "seconds": time.perf_counter() - start}
        if not keys:
            return Features(pooled=torch.zeros(0, 1))
        located = np.array([where[k] for k in keys], dtype=np.int32)
        return StoredFeatures(paths, located[:, 0].copy(), located[:, 1].copy(), tokens)


# (encoder, [(key, raw value)], load, batch_size, device) -> {key: Entry}: how missing inputs are encoded.
EncodeFn = Callable[[Encoder, list[tuple[Hashable, Any]], Callable[[list[Any]], list[Any]], int, Any],
                    dict[Hashable, Entry]]


@torch.no_grad()
def encode_inputs(encoder: Encoder, items: list[tuple[Hashable, Any]], load: Callable[[list[Any]], list[Any]],
                  batch_size: int, device: str | torch.device) -> dict[Hashable, Entry]:
    """key -> (pooled, real tokens) for each (key, raw value), the encoder run in eval mode."""
    was_training = encoder.training
    encoder.eval().to(device)
    out: dict[Hashable, Entry] = {}
    for first in range(0, len(items), batch_size):
        part = items[first : first + batch_size]
        prepared = encoder.prepare(load([value for _, value in part]))
        feats = encoder({k: v.to(device) for k, v in prepared.items()})
        for row, (key, _) in enumerate(part):
            tokens = None
            if feats.tokens is not None:
                tokens = feats.tokens[row].float().cpu()[feats.mask[row].cpu()].contiguous()
            out[key] = (feats.pooled[row].float().cpu().contiguous(), tokens)
    encoder.train(was_training)
    return out


def stack_inputs(keys: list[Hashable], entries: dict[Hashable, Entry]) -> Features:
    """Per-input entries -> one Features over `keys` (repeats allowed), tokens padded with a mask."""
    if not keys:
        return Features(pooled=torch.zeros(0, 1))
    pooled = torch.stack([entries[k][0] for k in keys])
    if entries[keys[0]][1] is None:
        return Features(pooled=pooled)
    width = max(entries[k][1].shape[0] for k in keys)
    tokens = torch.zeros(len(keys), width, pooled.shape[1])
    mask = torch.zeros(len(keys), width, dtype=torch.bool)
    for row, key in enumerate(keys):
        length = entries[key][1].shape[0]
        tokens[row, :length] = entries[key][1]
        mask[row, :length] = True
    return Features(pooled=pooled, tokens=tokens, mask=mask)
