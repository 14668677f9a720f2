"""Which FAISS index to build, with which parameters, and how to make it.

Every kind stores L2-normalised float32 vectors and searches by inner product (= cosine).

  flat    exact search over all vectors (IndexFlatIP inside an IndexIDMap)
  hnsw    graph search (IndexHNSWFlat inside an IndexIDMap); knob: ef_search
  ivf     inverted lists of full vectors (IndexIVFFlat); knob: nprobe
  ivf_pq  inverted lists of product-quantised codes (IndexIVFPQ), for indexes larger than RAM;
          knob: nprobe

"auto" is exact below FLAT_LIMIT vectors and HNSW above it. Why HNSW, measured by bench/index.py
on this 2-core machine (docs/benchmarks.md, vector index section), 200k clustered 384-d vectors: HNSW32 reached recall@10
0.973 at 11.5x / 0.941 at 24x over brute-force NumPy, IVF-Flat (2048 lists) only 0.821 at 13.8x /
0.721 at 25x: the data's clusters overlap, so the right neighbours spread over many lists. HNSW
costs a slower build (90 s for 200k) and cannot delete vectors in FAISS; removed ids are hidden
at search time instead (see vector_index.py).
"""
from __future__ import annotations

import math

import faiss

from ..errors import ConfigError

KINDS = ("flat", "hnsw", "ivf", "ivf_pq")

# Below this many vectors exact search takes a few milliseconds per query on 2 cores, and
# building an HNSW graph (~0.45 ms per vector here) would cost more than it saves.
FLAT_LIMIT = 50_000

# The parameter each kind accepts, with its default; None means "derived from expected_size".
DEFAULTS: dict[str, dict[str, object]] = {
    "flat": {},
    "hnsw": {"M": 32, "ef_construction": 80, "ef_search": 128},
    "ivf": {"nlist": None, "nprobe": 64},
    "ivf_pq": {"nlist": None, "nprobe": 64, "pq_m": None, "pq_nbits": 8},
}

# The recall-vs-speed knob of each kind, settable after the index is built.
SEARCH_KNOBS: dict[str, tuple[str, ...]] = {"flat": (), "hnsw": ("ef_search",), "ivf": ("nprobe",),
                                            "ivf_pq": ("nprobe",)}

# k-means needs ~40 points per list to place centroids well; more only costs training time.
TRAIN_POINTS_PER_LIST = 64


def choose_kind(kind: str, expected_size: int | None) -> str:
    """Resolve "auto" from the expected number of vectors; check an explicit kind."""
    if kind == "auto":
        return "flat" if expected_size is None or expected_size < FLAT_LIMIT else "hnsw"
    if kind not in KINDS:
        raise ConfigError(f"index kind {kind!r} is unknown; kinds: auto, {', '.join(KINDS)}")
    return kind


def resolve_params(kind: str, dim: int, expected_size: int | None, given: dict) -> dict:
    """The kind's defaults, overridden by `given`, with the size-derived ones filled in."""
    allowed = DEFAULTS[kind]
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        names = ", ".join(allowed) or "none"
        raise ConfigError(f"index parameter {unknown[0]!r} does not apply to kind {kind!r}; its parameters: {names}")
    params = {**allowed, **{k: v for k, v in given.items() if v is not None}}
    if "nlist" in params and params["nlist"] is None:
        if expected_size is None:
            raise ConfigError(f"index kind {kind!r} needs expected_size (or nlist) to size its lists")
        params["nlist"] = default_nlist(expected_size)
    if "pq_m" in params and params["pq_m"] is None:
        params["pq_m"] = default_pq_m(dim)
    if kind == "ivf_pq" and dim % params["pq_m"]:
        raise ConfigError(f"index parameter pq_m={params['pq_m']} must divide the vector width {dim}")
    return params


def default_nlist(expected_size: int) -> int:
    """~4·sqrt(n) lists (the FAISS wiki's rule of thumb), a power of two, at least 1."""
    return max(1, 2 ** round(math.log2(max(1.0, 4 * math.sqrt(expected_size)))))


def default_pq_m(dim: int) -> int:
    """8 dims per sub-quantiser (48 bytes per 384-d vector), or the largest divisor below that."""
    return next(m for m in range(max(1, dim // 8), 0, -1) if dim % m == 0)


def training_size(kind: str, params: dict) -> int:
    """How many vectors the kind's training wants (0: it needs none)."""
    if kind in ("ivf", "ivf_pq"):
        return TRAIN_POINTS_PER_LIST * max(params["nlist"], 256 if kind == "ivf_pq" else 0)
    return 0


def make_faiss_index(kind: str, dim: int, params: dict) -> faiss.Index:
    """An empty FAISS index that takes our int64 ids (add_with_ids) and searches by cosine."""
    ip = faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        return faiss.IndexIDMap(faiss.IndexFlatIP(dim))
    if kind == "hnsw":
        graph = faiss.IndexHNSWFlat(dim, params["M"], ip)
        graph.hnsw.efConstruction = params["ef_construction"]
        return faiss.IndexIDMap(graph)
    quantizer = faiss.IndexFlatIP(dim)
    if kind == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, params["nlist"], ip)
    else:
        index = faiss.IndexIVFPQ(quantizer, dim, params["nlist"], params["pq_m"], params["pq_nbits"], ip)
    return index  # faiss's Python wrapper keeps `quantizer` alive as long as `index`


def search_parameters(kind: str, params: dict, selector: faiss.IDSelector | None) -> faiss.SearchParameters:
    """Per-call FAISS search parameters: the kind's knob and an optional id filter."""
    if kind == "hnsw":
        return faiss.SearchParametersHNSW(efSearch=params["ef_search"], sel=selector)
    if kind in ("ivf", "ivf_pq"):
        return faiss.SearchParametersIVF(nprobe=params["nprobe"], sel=selector)
    return faiss.SearchParameters(sel=selector)


def mmap_flags(kind: str) -> int:
    """Read flags that memory-map the vectors rather than copy them (measured: RSS stays flat).

    IVF lists are mapped by IO_FLAG_MMAP; flat and HNSW storage by IO_FLAG_MMAP_IFC (the two do
    not combine: IVF refuses MMAP_IFC's reader).
    """
    if kind in ("ivf", "ivf_pq"):
        return faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY
    return faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY
