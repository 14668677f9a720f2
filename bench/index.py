"""Recall and speed of mmfuse's vector index (mmfuse.index) against exact search.

For each data set and index kind: build time, index size, then over the kind's search knob
(nprobe / ef_search) the top-10 recall against exact search (faiss.knn ground truth), the latency
of one query at a time (p50, p99), the per-query time in one batch of all queries, and the
speed-up over brute-force NumPy one query at a time (`(X @ q).argpartition`).

    python bench/index.py [--n 1000000] [--dim 384] [--queries 1000] [--data clustered|uniform|minilm|all]
                          [--kinds auto,hnsw] [--threads 2]

Data: "clustered" is a seeded mixture of 10,000 Gaussian clusters in a random 64-d subspace
(centres and within-cluster spread both unit variance) plus ambient noise (std 0.02), normalised;
"uniform" is uniformly random unit vectors (the worst case); "minilm" is MiniLM embeddings of the
distinct easy-VQA texts (questions, "question answer" pairs, "a {color} {shape}" captions).
Queries are held-out points of the same distribution. Prints markdown tables.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

# Running this file puts bench/ first on sys.path, where bench/easy_vqa.py would shadow the
# `easy_vqa` data package: drop it.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from mmfuse.index import VectorIndex  # noqa: E402

KNOB_VALUES = {"hnsw": [16, 32, 64, 128, 256, 512], "ivf": [8, 16, 32, 64, 128, 256, 512],
               "ivf_pq": [1, 4, 8, 16, 32, 64, 128, 256], "flat": [None]}
K = 10


# ---- data --------------------------------------------------------------------------------
def clustered(n: int, dim: int, rng: np.random.Generator, *, clusters: int = 10_000, sub: int = 64,
              chunk: int = 100_000) -> np.ndarray:
    basis, _ = np.linalg.qr(rng.standard_normal((dim, sub)))  # random orthonormal 64-d subspace
    centres = rng.standard_normal((clusters, sub)).astype(np.float32)
    basis_t = basis.T.astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for first in range(0, n, chunk):  # float32 chunks: 1M x 384 never exists in float64
        m = min(chunk, n - first)
        points = centres[rng.integers(clusters, size=m)] + rng.standard_normal((m, sub), dtype=np.float32)
        out[first : first + m] = points @ basis_t + 0.02 * rng.standard_normal((m, dim), dtype=np.float32)
    faiss.normalize_L2(out)
    return out


def uniform(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    out = rng.standard_normal((n, dim), dtype=np.float32)  # isotropic Gaussian -> uniform on the sphere
    faiss.normalize_L2(out)
    return out


def make_data(name: str, n: int, dim: int, queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(base, queries); the queries are drawn separately from the same distribution."""
    if name == "minilm":
        return minilm_texts(queries, seed)
    rng = np.random.default_rng(seed)
    if name == "uniform":
        return uniform(n, dim, rng), uniform(queries, dim, rng)
    # One call, so base and queries share the cluster centres and subspace.
    both = clustered(n + queries, dim, rng)
    return both[:n], both[n:]


def minilm_texts(queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    import torch

    from mmfuse.data.datasets import load_builtin
    from mmfuse.encoders import create_encoder

    table = load_builtin("easy_vqa")
    texts = set(table["question"]) | set(table["question"] + " " + table["answer"])
    texts |= set(captions(table))
    texts = sorted(texts)
    encoder = create_encoder("text", "minilm")
    with torch.no_grad():
        vectors = np.concatenate([encoder(encoder.prepare(texts[i : i + 256])).pooled.numpy()
                                  for i in range(0, len(texts), 256)]).astype(np.float32)
    faiss.normalize_L2(vectors)
    order = np.random.default_rng(seed).permutation(len(texts))
    held_out = min(queries, len(texts) // 10)
    print(f"minilm: {len(texts)} distinct texts, {held_out} held out as queries\n")
    return vectors[order[held_out:]], vectors[order[:held_out]]


def captions(table) -> list[str]:
    """'a {color} {shape}' per image, read off the answers to its colour and shape questions."""
    shapes = {"circle", "rectangle", "triangle"}
    colours = set(table["answer"]) - shapes - {"yes", "no"}
    shape = table[table["answer"].isin(shapes)].groupby("image")["answer"].first()
    colour = table[table["answer"].isin(colours)].groupby("image")["answer"].first()
    both = colour.to_frame("c").join(shape.to_frame("s"), how="inner")
    return sorted({f"a {c} {s}" for c, s in zip(both["c"], both["s"])})


# ---- measurements -------------------------------------------------------------------------
def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def brute_force_seconds(base: np.ndarray, queries: np.ndarray, count: int) -> float:
    """Mean seconds of exact top-10 in NumPy, one query at a time."""
    times = []
    for q in queries[:count]:
        start = time.perf_counter()
        scores = base @ q
        top = scores.argpartition(-K)[-K:]
        top[np.argsort(-scores[top])]
        times.append(time.perf_counter() - start)
    return float(np.mean(times))


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f, t)) / K for f, t in zip(found, truth)]))


def bench_kind(kind: str, base: np.ndarray, queries: np.ndarray, truth: np.ndarray, brute_s: float,
               single: int) -> list[str]:
    rss_before, start = rss_mib(), time.perf_counter()
    index = VectorIndex.create(base.shape[1], kind=kind, expected_size=len(base))
    sample = base[np.random.default_rng(1).permutation(len(base))[: index.training_size()]]
    index.train(sample)
    trained = time.perf_counter() - start
    for first in range(0, len(base), 100_000):
        index.add(base[first : first + 100_000])
    build_s = time.perf_counter() - start
    rss_delta = rss_mib() - rss_before
    with tempfile.TemporaryDirectory() as folder:
        index.save(folder)
        size_mib = os.path.getsize(Path(folder) / "index.faiss") / 2**20
    params = {k: v for k, v in index.params.items() if k not in ("nprobe", "ef_search")}
    print(f"**{index.kind}** {params} (asked for `{kind}`): build {build_s:.1f} s "
          f"(training {trained:.1f} s), index.faiss {size_mib:.0f} MiB, RSS +{rss_delta:.0f} MiB\n")
    knob = {"hnsw": "ef_search", "ivf": "nprobe", "ivf_pq": "nprobe"}.get(index.kind)
    lines = [f"| {knob or '-'} | recall@10 | p50 ms (1 query) | p99 ms (1 query) | ms/query (batch {len(queries)}) "
             f"| speed-up vs NumPy |", "|---|---|---|---|---|---|"]
    for value in KNOB_VALUES[index.kind]:
        if knob:
            index.set_search_params(**{knob: value})
        times = []
        for q in queries[:single]:
            t = time.perf_counter()
            index.search(q, K)
            times.append(time.perf_counter() - t)
        t = time.perf_counter()
        found = index.search(queries, K).ids
        batch_ms = (time.perf_counter() - t) / len(queries) * 1e3
        p50, p99 = np.percentile(times, [50, 99]) * 1e3
        lines.append(f"| {value if knob else 'exact'} | {recall(found, truth):.3f} | {p50:.2f} | {p99:.2f} "
                     f"| {batch_ms:.3f} | {brute_s / np.mean(times):.1f}x |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--data", choices=["clustered", "uniform", "minilm", "all"], default="all")
    parser.add_argument("--kinds", default="auto", help="comma list of index kinds (auto, flat, hnsw, ivf, ivf_pq)")
    parser.add_argument("--threads", type=int, default=2, help="FAISS OpenMP threads")
    parser.add_argument("--single", type=int, default=1000, help="queries timed one at a time")
    parser.add_argument("--brute", type=int, default=100, help="queries timed for brute-force NumPy")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    print(f"faiss {faiss.__version__}, {args.threads} FAISS threads, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}, numpy {np.__version__}\n")
    for name in ["clustered", "uniform", "minilm"] if args.data == "all" else [args.data]:
        start = time.perf_counter()
        base, queries = make_data(name, args.n, args.dim, args.queries, args.seed)
        made = time.perf_counter() - start
        _, truth = faiss.knn(queries, base, K, metric=faiss.METRIC_INNER_PRODUCT)
        brute_s = brute_force_seconds(base, queries, args.brute)
        print(f"### {name}: {len(base):,} x {base.shape[1]} base, {len(queries):,} queries\n\n"
              f"data {made:.1f} s; brute-force NumPy one query at a time: {brute_s * 1e3:.2f} ms/query\n")
        for kind in args.kinds.split(","):
            print("\n".join(bench_kind(kind, base, queries, truth, brute_s, args.single)) + "\n", flush=True)


if __name__ == "__main__":
    main()
