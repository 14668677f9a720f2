"""mmfuse.index: real FAISS indexes on small random data (exact settings where a test needs them)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmfuse.errors import ArtifactError, ConfigError, DataError, MmfuseError
from mmfuse.index import FLAT_LIMIT, SearchResult, VectorIndex, build_index, choose_kind

DIM = 16
# Approximate kinds with settings that make them exact on a few hundred vectors, so tests can
# compare results for equality.
KIND_PARAMS = {
    "flat": {},
    "hnsw": {"M": 16, "ef_search": 512},
    "ivf": {"nlist": 4, "nprobe": 4},
    "ivf_pq": {"nlist": 4, "nprobe": 4, "pq_m": 4, "pq_nbits": 4},
}


def random_vectors(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def make_index(kind: str, n: int = 400) -> VectorIndex:
    index = VectorIndex.create(DIM, kind=kind, **KIND_PARAMS[kind])
    index.add(random_vectors(n), pd.DataFrame({"text": [f"row {i}" for i in range(n)], "n": range(n)}))
    return index


def assert_same(a: SearchResult, b: SearchResult) -> None:
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6, atol=1e-6)


def test_flat_search_equals_brute_force_numpy_top_k():
    base, queries = random_vectors(500), random_vectors(20, seed=1)
    index = VectorIndex.create(DIM, kind="flat")
    ids = index.add(base)
    result = index.search(queries, 7)

    unit = base / np.linalg.norm(base, axis=1, keepdims=True)
    sims = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ unit.T
    expected = np.argsort(-sims, axis=1)[:, :7]
    np.testing.assert_array_equal(result.ids, ids[expected])
    np.testing.assert_allclose(result.scores, np.take_along_axis(sims, expected, axis=1), atol=1e-5)
    assert result.scores.dtype == np.float32 and result.ids.dtype == np.int64


@pytest.mark.parametrize("kind", list(KIND_PARAMS))
@pytest.mark.parametrize("mmap", [True, False])
def test_save_close_reopen_gives_identical_results(tmp_path, kind, mmap):
    index = make_index(kind)
    index.info["model"] = "runs/some_model"
    queries = random_vectors(25, seed=2)
    before = index.search(queries, 10)
    index.save(tmp_path / "idx")
    del index

    reopened = VectorIndex.open(tmp_path / "idx", mmap=mmap)
    assert_same(reopened.search(queries, 10), before)
    assert (reopened.kind, len(reopened), reopened.info) == (kind, 400, {"model": "runs/some_model"})
    rows = reopened.metadata_for(before.ids[0])
    assert rows["id"].tolist() == before.ids[0].tolist()
    assert rows["text"].tolist() == [f"row {i}" for i in before.ids[0]]
    manifest = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert manifest["kind"] == kind and manifest["dim"] == DIM and manifest["count"] == 400


@pytest.mark.parametrize("kind", list(KIND_PARAMS))
def test_add_then_remove_leaves_results_as_they_were(kind):
    index = make_index(kind)
    queries = random_vectors(10, seed=3)
    before = index.search(queries, 10)

    ids = index.add(queries * 2.0)  # the queries themselves: each becomes its own best match
    if kind != "ivf_pq":  # PQ codes are lossy: a vector's own code need not rank first
        assert index.search(queries, 1).ids[:, 0].tolist() == ids.tolist()
    assert index.remove(ids) == len(ids)

    assert_same(index.search(queries, 10), before)
    assert len(index) == 400
    assert index.remove(ids) == 0  # already gone


@pytest.mark.parametrize("kind", list(KIND_PARAMS))
def test_removed_ids_stay_gone_after_save_reopen_and_add(tmp_path, kind):
    index = make_index(kind)
    queries = random_vectors(5, seed=4)
    gone = index.search(queries, 3).ids.ravel()
    index.remove(gone)
    index.save(tmp_path / "idx")

    reopened = VectorIndex.open(tmp_path / "idx")  # memory-mapped: removal hides ids
    more = reopened.remove(reopened.search(queries, 1).ids[:, 0])
    assert more > 0
    new_ids = reopened.add(random_vectors(3, seed=5))  # copies the mapped index into memory
    assert new_ids.min() == 400  # ids are never reused
    found = reopened.search(queries, 50).ids
    assert not np.isin(found, gone).any()
    assert len(reopened) == 400 - len(np.unique(gone)) - more + 3
    with pytest.raises(DataError, match=f"id {int(gone[0])} is not in the index"):
        reopened.metadata_for([gone[0]])


def test_search_pads_with_minus_one_when_k_exceeds_size():
    index = VectorIndex.create(DIM)
    index.add(random_vectors(3))
    result = index.search(random_vectors(1, seed=1)[0], 5)  # a single 1-d query works too
    assert result.ids[0, 3:].tolist() == [-1, -1]
    assert np.isneginf(result.scores[0, 3:]).all() and np.isfinite(result.scores[0, :3]).all()
    assert len(index.metadata_for(result.ids[0])) == 3
    assert index.remove(int(result.ids[0, 0])) == 1 and len(index) == 2  # a single id works too
    empty = VectorIndex.create(DIM, kind="ivf", nlist=4)  # untrained: nothing to find, no error
    assert (empty.search(random_vectors(2), 3).ids == -1).all()


def test_auto_picks_flat_for_small_and_hnsw_for_large():
    assert choose_kind("auto", None) == "flat"
    assert choose_kind("auto", FLAT_LIMIT - 1) == "flat"
    assert choose_kind("auto", 1_000_000) == "hnsw"
    assert VectorIndex.create(DIM, expected_size=1000).kind == "flat"
    large = VectorIndex.create(DIM, expected_size=2_000_000, ef_search=64)
    assert large.kind == "hnsw" and large.params["ef_search"] == 64
    ivf = VectorIndex.create(DIM, kind="ivf", expected_size=1_000_000)
    assert ivf.params["nlist"] == 4096  # ~4 sqrt(n), a power of two


def test_bad_kind_params_and_inputs_are_clear_errors():
    with pytest.raises(ConfigError, match="kinds: auto, flat, hnsw"):
        VectorIndex.create(DIM, kind="annoy")
    with pytest.raises(ConfigError, match="'nprobe' does not apply to kind 'hnsw'"):
        VectorIndex.create(DIM, kind="hnsw", nprobe=3)
    with pytest.raises(ConfigError, match="needs expected_size"):
        VectorIndex.create(DIM, kind="ivf")
    index = make_index("flat", n=10)
    with pytest.raises(DataError, match=r"expected shape \(n, 16\)"):
        index.add(random_vectors(2, dim=8))
    nan = random_vectors(3)
    nan[1, 0] = np.nan
    with pytest.raises(DataError, match="row 1 holds NaN"):
        index.add(nan)
    with pytest.raises(DataError, match="metadata has 2 rows for 3 vectors"):
        index.add(random_vectors(3), pd.DataFrame({"a": [1, 2]}))
    with pytest.raises(MmfuseError, match="'ef_search' does not apply to a flat index"):
        index.set_search_params(ef_search=10)
    assert len(index) == 10  # nothing half-added


# ---- damaged files --------------------------------------------------------------------------
def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _garble(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = np.random.default_rng(0).bytes(64)
    path.write_bytes(bytes(data))


DAMAGE = {
    "missing index.faiss": ("index.faiss", Path.unlink),
    "missing index.json": ("index.json", Path.unlink),
    "missing metadata.parquet": ("metadata.parquet", Path.unlink),
    "truncated index.faiss": ("index.faiss", _truncate),
    "garbage bytes in index.faiss": ("index.faiss", _garble),
    "garbage index.json": ("index.json", lambda p: p.write_text("{not json")),
    "index.json without dim": ("index.json", lambda p: p.write_text(
        json.dumps({k: v for k, v in json.loads(p.read_text()).items() if k != "dim"}))),
    "garbage metadata.parquet": ("metadata.parquet", lambda p: p.write_bytes(b"garbage" * 50)),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_missing_or_corrupt_files_raise_artifact_error_naming_the_file(tmp_path, damage):
    make_index("flat", n=50).save(tmp_path)
    name, spoil = DAMAGE[damage]
    spoil(tmp_path / name)
    with pytest.raises(ArtifactError, match=name.replace(".", r"\.")):
        VectorIndex.open(tmp_path)


def test_unverified_garbage_index_file_is_still_an_artifact_error(tmp_path):
    make_index("flat", n=50).save(tmp_path)
    path = tmp_path / "index.faiss"
    path.write_bytes(np.random.default_rng(1).bytes(path.stat().st_size))  # same size, no checksum
    with pytest.raises(ArtifactError, match="index.faiss: not a readable FAISS index"):
        VectorIndex.open(tmp_path, verify=False)


def test_open_a_directory_that_is_not_there(tmp_path):
    with pytest.raises(ArtifactError, match="no such index directory"):
        VectorIndex.open(tmp_path / "nowhere")


# ---- build_index ----------------------------------------------------------------------------
def text_table(n: int = 50) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"caption {i}" for i in range(n)], "label": [i % 3 for i in range(n)]})


def fake_embed(chunk: pd.DataFrame) -> np.ndarray:
    """A deterministic embedding of each row's text (stands in for an encoder)."""
    return np.stack([random_vectors(1, seed=int(t.split()[1]))[0] for t in chunk["text"]])


class Killed(Exception):
    """Stands in for the process being killed in the middle of a build."""


def test_build_index_resumes_without_re_embedding_staged_chunks(tmp_path):
    rows = text_table()
    calls: list[int] = []
    dies_at = {24}  # the first row of chunk 3 (batch_size 8)

    def embed(chunk):
        calls.append(int(chunk.index[0]))
        if calls[-1] in dies_at:
            raise Killed
        return fake_embed(chunk)

    with pytest.raises(Killed):
        build_index(rows, embed, tmp_path / "idx", batch_size=8)
    assert calls == [0, 8, 16, 24]
    assert len(list((tmp_path / "idx" / "_staging").glob("*.npy"))) == 3

    calls.clear()
    dies_at.clear()
    resumed = build_index(rows, embed, tmp_path / "idx", batch_size=8, info={"model": "m"})
    assert calls == [24, 32, 40, 48]  # only chunks 3.. were embedded again
    assert not (tmp_path / "idx" / "_staging").exists()

    straight = build_index(rows, fake_embed, tmp_path / "straight", batch_size=8)
    queries = fake_embed(rows.iloc[:10])
    assert_same(resumed.search(queries, 5), straight.search(queries, 5))
    reopened = VectorIndex.open(tmp_path / "idx")
    assert_same(reopened.search(queries, 5), straight.search(queries, 5))
    assert reopened.info == {"model": "m"}
    assert reopened.metadata_for([0, 49])["text"].tolist() == ["caption 0", "caption 49"]


def test_build_index_re_embeds_a_chunk_whose_rows_changed(tmp_path):
    rows = text_table(20)
    staging = tmp_path / "idx" / "_staging"

    def dies_at_the_end(chunk):
        if chunk.index[0] == 16:
            raise Killed
        return fake_embed(chunk)

    with pytest.raises(Killed):
        build_index(rows, dies_at_the_end, tmp_path / "idx", batch_size=8)
    assert len(list(staging.glob("*.npy"))) == 2
    rows.loc[9, "text"] = "caption 99"  # chunk 1 (rows 8..15) is no longer what was staged
    seen: list[int] = []
    index = build_index(rows, lambda c: seen.append(int(c.index[0])) or fake_embed(c), tmp_path / "idx",
                        batch_size=8)
    assert seen == [8, 16]
    assert index.metadata_for([9])["text"].tolist() == ["caption 99"]
    hit = index.search(fake_embed(rows.iloc[[9]]), 1).ids[0, 0]
    assert hit == 9


def test_build_index_trains_an_ivf_index_from_the_shards(tmp_path):
    rows = text_table(200)
    index = build_index(rows, fake_embed, tmp_path / "idx", batch_size=64, kind="ivf", nlist=4, nprobe=4)
    assert index.kind == "ivf" and len(index) == 200
    assert index.search(fake_embed(rows.iloc[[7]]), 1).ids[0, 0] == 7


def test_build_index_rejects_an_embedding_of_the_wrong_shape(tmp_path):
    with pytest.raises(DataError, match=r"embedding rows 0\.\.7: expected 8 vectors"):
        build_index(text_table(10), lambda chunk: np.zeros((3, DIM)), tmp_path / "idx", batch_size=8)
