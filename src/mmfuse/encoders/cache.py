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
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from ..features import Features
from .base import Encoder

SHARD_ITEMS = 2048


def content_hash(modality: str, value: Any) -> str:
    """Images by file bytes (a renamed copy is the same input), text by its characters."""
    if modality == "image":
        data = Path(value).read_bytes()
    else:
        data = str(value).encode("utf-8")
    return hashlib.sha256(data).hexdigest()[:32]


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
                 batch_size: int = 64, device: str | torch.device = "cpu", variant: str | None = None) -> Features:
        """Features for `values` (unique inputs), computing only the ones not on disk yet.

        `load` turns raw values (paths) into what `encoder.prepare` takes (decoded images).
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
            shard = self._compute(encoder, chunk, load, batch_size, device)
            path = folder / f"{uuid.uuid4().hex}.safetensors"
            save_file(shard, str(path.with_suffix(".tmp")))
            path.with_suffix(".tmp").rename(path)  # atomic: a shard is whole or absent
            for key, _ in chunk:
                where[key] = path
            computed += len(chunk)
        feats = self._read(keys, where)
        self.last_stats = {"computed": computed, "reused": len(set(keys)) - computed,
                           "seconds": time.perf_counter() - start}
        return feats

    @torch.no_grad()
    def _compute(self, encoder: Encoder, chunk: list[tuple[str, Any]], load, batch_size, device) -> dict[str, Tensor]:
        was_training = encoder.training
        encoder.eval().to(device)
        out: dict[str, Tensor] = {}
        for first in range(0, len(chunk), batch_size):
            part = chunk[first : first + batch_size]
            prepared = encoder.prepare(load([value for _, value in part]))
            feats = encoder({k: v.to(device) for k, v in prepared.items()})
            for row, (key, _) in enumerate(part):
                out[f"{key}/pooled"] = feats.pooled[row].float().cpu().contiguous()
                if feats.tokens is not None:
                    real = feats.mask[row].cpu()
                    out[f"{key}/tokens"] = feats.tokens[row].float().cpu()[real].contiguous()
        encoder.train(was_training)
        return out

    @staticmethod
    def _read(keys: list[str], where: dict[str, Path]) -> Features:
        by_shard: dict[Path, list[str]] = {}
        for key in dict.fromkeys(keys):
            by_shard.setdefault(where[key], []).append(key)
        pooled: dict[str, Tensor] = {}
        tokens: dict[str, Tensor] = {}
        for shard, wanted in by_shard.items():
            with safe_open(str(shard), framework="pt") as handle:
                names = set(handle.keys())
                for key in wanted:
                    pooled[key] = handle.get_tensor(f"{key}/pooled")
                    if f"{key}/tokens" in names:
                        tokens[key] = handle.get_tensor(f"{key}/tokens")
        stacked = torch.stack([pooled[k] for k in keys]) if keys else torch.zeros(0, 1)
        if not tokens:
            return Features(pooled=stacked)
        width = max(tokens[k].shape[0] for k in keys)
        padded = torch.zeros(len(keys), width, stacked.shape[1])
        mask = torch.zeros(len(keys), width, dtype=torch.bool)
        for row, key in enumerate(keys):
            length = tokens[key].shape[0]
            padded[row, :length] = tokens[key]
            mask[row, :length] = True
        return Features(pooled=stacked, tokens=padded, mask=mask)
