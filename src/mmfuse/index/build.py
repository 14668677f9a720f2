"""build_index: embed a table chunk by chunk into an index on disk, resumably.

Each chunk's vectors go to their own staging shard, `OUT/_staging/00012-<rows hash>.npy`, written
atomically, so memory does not grow with the table and a run that is killed keeps every finished
chunk. A rerun embeds only the chunks without a shard; the rows hash in the file name proves a
shard was made from the same rows (a changed table or batch size re-embeds what changed). When all
chunks are staged the index is trained on a sample of the shards, filled shard by shard, saved to
OUT, and the staging folder is removed.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..errors import DataError
from .vector_index import VectorIndex

STAGING = "_staging"


def build_index(rows: pd.DataFrame, embed: Callable[[pd.DataFrame], np.ndarray], out: str | Path, *,
                batch_size: int = 256, kind: str = "auto", resume: bool = True,
                info: dict | None = None, seed: int = 0, **params) -> VectorIndex:
    """Index `embed(chunk)` of every chunk of `rows`, with `rows` as the metadata; saved to `out`."""
    if len(rows) == 0:
        raise DataError("no rows to index")
    if batch_size < 1:
        raise DataError(f"batch_size must be at least 1, got {batch_size}")
    rows = rows.reset_index(drop=True)
    staging = Path(out) / STAGING
    if not resume:
        shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True, exist_ok=True)
    shards = [_stage_chunk(rows, start, batch_size, embed, staging) for start in range(0, len(rows), batch_size)]
    for stale in set(staging.glob("*.npy")) - set(shards):
        stale.unlink()  # from an earlier run over other rows or another batch size

    dim = int(np.load(shards[0], mmap_mode="r").shape[1])
    index = VectorIndex.create(dim, kind=kind, expected_size=len(rows), **params)
    index.train(_sample(shards, index.training_size(), seed))
    for start, shard in zip(range(0, len(rows), batch_size), shards):
        index.add(np.load(shard, allow_pickle=False), rows.iloc[start : start + batch_size])
    index.info.update(info or {})
    index.save(out)
    shutil.rmtree(staging)
    return index


def _stage_chunk(rows: pd.DataFrame, start: int, batch_size: int,
                 embed: Callable[[pd.DataFrame], np.ndarray], staging: Path) -> Path:
    """The shard of rows[start:start+batch_size], embedding the chunk only if it is not staged."""
    chunk = rows.iloc[start : start + batch_size]
    number = start // batch_size
    shard = staging / f"{number:05d}-{_rows_hash(chunk)}.npy"
    if shard.exists():
        return shard
    vectors = np.asarray(embed(chunk), dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(chunk):
        raise DataError(f"embedding rows {start}..{start + len(chunk) - 1}: expected {len(chunk)} vectors "
                        f"(a 2-d array), got shape {vectors.shape}")
    tmp = shard.with_suffix(".tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, vectors, allow_pickle=False)
    tmp.rename(shard)  # atomic: a shard is whole or absent
    return shard


def _rows_hash(chunk: pd.DataFrame) -> str:
    digest = hashlib.sha256(repr(list(chunk.columns)).encode())
    digest.update(pd.util.hash_pandas_object(chunk, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def _sample(shards: list[Path], size: int, seed: int) -> np.ndarray | None:
    """Up to `size` rows drawn uniformly from all shards, reading only those rows."""
    if size == 0:
        return None
    mapped = [np.load(shard, mmap_mode="r") for shard in shards]
    total = sum(len(m) for m in mapped)
    chosen = np.sort(np.random.default_rng(seed).choice(total, size=min(size, total), replace=False))
    offsets = np.cumsum([0] + [len(m) for m in mapped])
    parts = []
    for m, first, last in zip(mapped, offsets[:-1], offsets[1:]):
        mine = chosen[(chosen >= first) & (chosen < last)] - first
        if len(mine):
            parts.append(np.asarray(m[mine]))
    return np.concatenate(parts)
