"""VectorIndex: a FAISS index of L2-normalised vectors with stable int64 ids and a metadata table.

Ids are handed out by a counter saved with the index, so an id names the same vector forever and
a removed id never comes back. Removal works two ways:
  - flat and IVF indexes held in memory delete the vectors in FAISS (remove_ids), no rebuild;
  - HNSW cannot delete (FAISS raises), and an index opened memory-mapped must not be written, so
    there the ids are *hidden*: kept in a set saved with the index and filtered out inside the
    FAISS search through an IDSelector. FAISS then returns the best k among the visible vectors
    itself, so no over-fetching is needed. Hidden vectors still cost memory and some search time;
    rebuild an HNSW index when a large share of it has been removed.
An index opened memory-mapped is copied into memory (re-read without mmap) on its first `add`.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterable

import faiss
import numpy as np
import pandas as pd

from ..errors import ArtifactError, DataError, MmfuseError
from . import storage
from .choose import (SEARCH_KNOBS, choose_kind, make_faiss_index, mmap_flags, resolve_params,
                     search_parameters, training_size)
from .result import SearchResult


class VectorIndex:
    def __init__(self, faiss_index: faiss.Index, *, kind: str, dim: int, params: dict,
                 metadata: pd.DataFrame, next_id: int = 0, hidden: Iterable[int] = (),
                 info: dict | None = None, mapped_from: Path | None = None):
        """Use `create` or `open`; this wires already-consistent parts together."""
        self._index = faiss_index
        self.kind, self.dim, self.params = kind, dim, dict(params)
        self._metadata = metadata.set_index("id", drop=False)
        self._pending: list[pd.DataFrame] = []  # metadata of recent adds, joined when first read
        self._next_id = next_id
        self._hidden = set(int(i) for i in hidden)
        self._selector: faiss.IDSelector | None = None
        self.info: dict[str, Any] = dict(info or {})
        self._mapped_from = mapped_from  # index.faiss this index reads through mmap (read-only)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def create(cls, dim: int, *, kind: str = "auto", expected_size: int | None = None,
               **params) -> "VectorIndex":
        """An empty index for `dim`-wide vectors. kind "auto": exact (flat) below
        choose.FLAT_LIMIT expected vectors, IVF-Flat above; `params` override the defaults."""
        if not isinstance(dim, (int, np.integer)) or dim < 1:
            raise MmfuseError(f"index dim must be a positive integer, got {dim!r}")
        kind = choose_kind(kind, expected_size)
        params = resolve_params(kind, int(dim), expected_size, params)
        return cls(make_faiss_index(kind, int(dim), params), kind=kind, dim=int(dim), params=params,
                   metadata=pd.DataFrame({"id": pd.Series(dtype="int64")}))

    @classmethod
    def open(cls, directory: str | Path, *, mmap: bool = True, verify: bool = True) -> "VectorIndex":
        """Open a saved index. mmap: map the vectors from disk instead of reading them into
        memory (fast to open, pages load on use, shared between processes). verify: check
        index.faiss against the sha256 in index.json (reads the file once)."""
        directory = Path(directory)
        manifest = storage.read_manifest(directory)
        flags = mmap_flags(manifest["kind"]) if mmap else 0
        index = storage.read_faiss(directory, manifest, flags, verify)
        stored = index.ntotal - len(manifest["hidden"])
        if stored != manifest["count"]:
            raise ArtifactError(f"{directory / storage.INDEX_FILE}: holds {stored} vectors, "
                              f"{storage.MANIFEST_FILE} says {manifest['count']}")
        metadata = storage.read_metadata(directory, manifest)
        return cls(index, kind=manifest["kind"], dim=manifest["dim"], params=manifest["params"],
                   metadata=metadata, next_id=manifest["next_id"], hidden=manifest["hidden"],
                   info=manifest["info"], mapped_from=directory / storage.INDEX_FILE if mmap else None)

    # ---- writing ------------------------------------------------------------------------
    @property
    def is_trained(self) -> bool:
        return bool(self._index.is_trained)

    def training_size(self) -> int:
        """How many sample vectors `train` would like (0 for kinds that need no training)."""
        return training_size(self.kind, self.params)

    def train(self, vectors: np.ndarray) -> None:
        """Fit the IVF lists (and PQ codebooks) on a sample of the data; no-op for flat/HNSW."""
        if self.is_trained:
            return
        sample = self._normalised(vectors, "training vectors", reject_zero=True)
        needed = self.params.get("nlist", 1)
        if len(sample) < needed:
            raise DataError(f"index kind {self.kind!r} with nlist={needed} needs at least {needed} "
                            f"training vectors, got {len(sample)}; pass a smaller nlist")
        self._index.train(sample)

    def add(self, vectors: np.ndarray, metadata: pd.DataFrame | None = None) -> np.ndarray:
        """Add vectors (normalised here); returns their new ids. `metadata`: one row per vector."""
        vectors = self._normalised(vectors, "vectors", reject_zero=True)
        rows = self._metadata_rows(metadata, len(vectors))
        if not self.is_trained:
            self.train(vectors)  # first add of an untrained IVF index: its own data is the sample
        self._make_writable()
        ids = np.arange(self._next_id, self._next_id + len(vectors), dtype=np.int64)
        self._index.add_with_ids(vectors, ids)
        self._next_id += len(vectors)
        rows.insert(0, "id", ids)
        self._pending.append(rows)
        return ids

    def remove(self, ids: Iterable[int] | int) -> int:
        """Remove vectors by id; returns how many were present. Unknown ids are ignored."""
        wanted = np.unique(np.atleast_1d(np.asarray(ids, dtype=np.int64)))
        present = self.metadata.index.intersection(wanted).to_numpy(dtype=np.int64)
        if len(present) == 0:
            return 0
        if self.kind == "hnsw" or self._mapped_from is not None:
            self._hidden.update(present.tolist())
            self._selector = None
        else:
            self._index.remove_ids(present)
        self._metadata = self._metadata.drop(index=present)
        return len(present)

    def set_search_params(self, **knob) -> None:
        """Set the recall-vs-speed knob: ef_search (hnsw) or nprobe (ivf, ivf_pq). Saved."""
        allowed = SEARCH_KNOBS[self.kind]
        for name, value in knob.items():
            if name not in allowed:
                raise MmfuseError(f"search parameter {name!r} does not apply to a {self.kind} index; "
                                  f"its search parameters: {', '.join(allowed) or 'none'}")
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise MmfuseError(f"search parameter {name} must be a positive integer, got {value!r}")
            self.params[name] = int(value)

    # ---- reading ------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._index.ntotal) - len(self._hidden)

    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        """The k most cosine-similar vectors to each query (one row per query), best first."""
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise MmfuseError(f"k must be a positive integer, got {k!r}")
        queries = self._normalised(queries, "queries", reject_zero=False)
        if self._index.ntotal == 0:  # an untrained IVF index cannot be searched; nothing to find
            return SearchResult(scores=np.full((len(queries), k), -np.inf, dtype=np.float32),
                                ids=np.full((len(queries), k), -1, dtype=np.int64))
        scores, ids = self._index.search(queries, int(k), params=self._search_parameters())
        scores[ids < 0] = -np.inf
        return SearchResult(scores=scores.astype(np.float32, copy=False), ids=ids.astype(np.int64, copy=False))

    def metadata_for(self, ids: Iterable[int]) -> pd.DataFrame:
        """Metadata rows (with their "id" column) for `ids`, in that order; -1 pads are skipped."""
        wanted = np.asarray(ids, dtype=np.int64).ravel()
        wanted = wanted[wanted >= 0]
        frame = self.metadata
        unknown = np.setdiff1d(wanted, frame.index.to_numpy())
        if len(unknown):
            raise DataError(f"id {int(unknown[0])} is not in the index (never added, or removed)")
        return frame.loc[wanted].reset_index(drop=True)

    @property
    def metadata(self) -> pd.DataFrame:
        """All live rows, indexed by id (also kept as the "id" column)."""
        if self._pending:
            parts = [self._metadata, *(p.set_index("id", drop=False) for p in self._pending)]
            self._metadata = pd.concat([p for p in parts if len(p)] or parts[:1])
            self._pending = []
        return self._metadata

    # ---- saving -------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Write index.faiss, metadata.parquet and index.json into `directory`."""
        self._check_info()
        if self._mapped_from is not None:
            # A mapped index never changed on disk; copy its file (writing a mapped IVF index
            # would store a reference to the mapped file instead of the lists).
            source = self._mapped_from
            write_faiss = lambda path: shutil.copyfile(source, path)  # noqa: E731
        else:
            write_faiss = lambda path: faiss.write_index(self._index, str(path))  # noqa: E731
        manifest = {"kind": self.kind, "dim": self.dim, "params": self.params, "count": len(self),
                    "next_id": self._next_id, "hidden": sorted(self._hidden), "info": self.info}
        storage.write(directory, write_faiss, self.metadata.reset_index(drop=True), manifest)

    # ---- helpers ------------------------------------------------------------------------
    def _normalised(self, vectors: Any, what: str, *, reject_zero: bool) -> np.ndarray:
        """A float32 (n, dim) copy with unit rows; a single vector may be 1-d."""
        array = np.array(vectors, dtype=np.float32, copy=True)
        if array.ndim == 1:
            array = array[None, :]
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise DataError(f"{what}: expected shape (n, {self.dim}), got {np.shape(vectors)}")
        bad = ~np.isfinite(array).all(axis=1)
        if bad.any():
            raise DataError(f"{what}: row {int(np.argmax(bad))} holds NaN or infinity")
        if reject_zero:
            zero = ~array.any(axis=1)
            if zero.any():
                raise DataError(f"{what}: row {int(np.argmax(zero))} is all zeros (no direction to compare)")
        faiss.normalize_L2(array)
        return array

    def _metadata_rows(self, metadata: pd.DataFrame | None, count: int) -> pd.DataFrame:
        if metadata is None:
            return pd.DataFrame(index=range(count))
        if not isinstance(metadata, pd.DataFrame):
            raise DataError(f"metadata must be a pandas DataFrame, got {type(metadata).__name__}")
        if len(metadata) != count:
            raise DataError(f"metadata has {len(metadata)} rows for {count} vectors")
        if "id" in metadata.columns:
            raise DataError("metadata has an 'id' column; the index assigns ids: rename that column")
        return metadata.reset_index(drop=True)

    def _make_writable(self) -> None:
        """Replace a memory-mapped (read-only) FAISS index by an in-memory copy of it."""
        if self._mapped_from is not None:
            self._index = faiss.read_index(str(self._mapped_from))
            self._mapped_from = None
            if self.kind != "hnsw" and self._hidden:  # now they can really go
                self._index.remove_ids(np.fromiter(self._hidden, dtype=np.int64))
                self._hidden, self._selector = set(), None

    def _search_parameters(self) -> faiss.SearchParameters:
        if self._hidden and self._selector is None:
            hidden = faiss.IDSelectorBatch(np.fromiter(self._hidden, dtype=np.int64))
            self._selector = faiss.IDSelectorNot(hidden)
            self._selector.referenced = hidden  # IDSelectorNot holds a raw pointer to it
        return search_parameters(self.kind, self.params, self._selector if self._hidden else None)

    def _check_info(self) -> None:
        try:
            json.dumps(self.info)
        except (TypeError, ValueError) as error:
            raise DataError(f"index info must be JSON-able (it is saved in index.json): {error}") from None
