"""On-disk feature cache for frozen encoders.

A frozen encoder runs once per unique input, ever: the key is the input's content hash (file bytes
or text) under a folder named by the encoder's fingerprint (name + weights + preprocessing), so a
new weight, image size or tokenizer limit recomputes, and everything else is reused across epochs,
runs and configs. Shards are safetensors files (no pickle); an interrupted extraction keeps the
shards it finished.
"""
from __future__ import annotations

import hashlib
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Hashable

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from ..features import Features
from ..modalities import MODALITIES
from .base import Encoder

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

    def _stored(self, folder: Path) -> dict[str, Path]:
        """content hash -> shard holding it (reads only the safetensors headers)."""
        where: dict[str, Path] = {}
        for shard in sorted(folder.glob("*.safetensors")):
            with safe_open(str(shard), framework="pt") as handle:
                for name in handle.keys():
                    if name.endswith("/pooled"):
                        where[name[: -len("/pooled")]] = shard
        return where

    def features(self, encoder: Encoder, values: list[Any], load: Callable[[list[Any]], list[Any]],
                 batch_size: int = 64, device: str | torch.device = "cpu", variant: str | None = None,
                 tokens: bool = True, encode: "EncodeFn | None" = None) -> Features:
        """Features for `values` (unique inputs), computing only the ones not on disk yet.

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
        where = self._stored(folder)
        missing = sorted({k: v for k, v in zip(keys, values) if k not in where}.items())
        computed = 0
        for first in range(0, len(missing), SHARD_ITEMS):
            chunk = missing[first : first + SHARD_ITEMS]
            shard = self._compute(encoder, chunk, load, batch_size, device, encode or encode_inputs)
            path = folder / f"{uuid.uuid4().hex}.safetensors"
            save_file(shard, str(path.with_suffix(".tmp")))
            path.with_suffix(".tmp").rename(path)  # atomic: a shard is whole or absent
            for key, _ in chunk:
                where[key] = path
            computed += len(chunk)
        feats = self._read(keys, where, tokens)
        self.last_stats = {"computed": computed, "reused": len(set(keys)) - computed,
                           "seconds": time.perf_counter() - start}
        return feats

    @staticmethod
    def _compute(encoder: Encoder, chunk: list[tuple[str, Any]], load, batch_size, device,
                 encode: "EncodeFn") -> dict[str, Tensor]:
        """One shard: `<key>/pooled` and, for token encoders, `<key>/tokens` (real tokens only)."""
        shard: dict[str, Tensor] = {}
        for key, (pooled, tokens) in encode(encoder, chunk, load, batch_size, device).items():
            shard[f"{key}/pooled"] = pooled
            if tokens is not None:
                shard[f"{key}/tokens"] = tokens
        return shard

    @staticmethod
    def _read(keys: list[str], where: dict[str, Path], with_tokens: bool = True) -> Features:
        by_shard: dict[Path, list[str]] = {}
        for key in dict.fromkeys(keys):
            by_shard.setdefault(where[key], []).append(key)
        entries: dict[str, Entry] = {}
        for shard, wanted in by_shard.items():
            with safe_open(str(shard), framework="pt") as handle:
                names = set(handle.keys())
                for key in wanted:
                    stored = with_tokens and f"{key}/tokens" in names
                    tokens = handle.get_tensor(f"{key}/tokens") if stored else None
                    entries[key] = (handle.get_tensor(f"{key}/pooled"), tokens)
        return stack_inputs(keys, entries)


# One input's features as stored: its pooled vector, and its real tokens (None: no tokens).
Entry = tuple[Tensor, Tensor | None]
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
