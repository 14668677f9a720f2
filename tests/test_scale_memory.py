"""Tables larger than memory: cached features read per batch from the shards, trainable encoders'
inputs decoded per batch, the manifest read in pieces, and each the same as the in-memory path."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from conftest import tiny_config, write_shapes_csv
from mmfuse import Predictor
from mmfuse.config import DataConfig
from mmfuse.data import manifest as manifest_module
from mmfuse.data.batching import ModalityColumn, gather
from mmfuse.data.manifest import load_manifest
from mmfuse.dataset import build_dataset, loader
from mmfuse.encoders import create_encoder
from mmfuse.encoders import cache as cache_module
from mmfuse.encoders.cache import FeatureCache, content_hash, encode_inputs, stack_inputs
from mmfuse.encoders.shards import FORMAT, read_header
from mmfuse.encoders.stored import StoredFeatures
from mmfuse.errors import DataError
from mmfuse.model import FeatureScaler

TEXTS = ["a", "a b c", "b", "c a b a", "c c"]  # token counts 1-4: a batch pads to its own longest


def write_images(folder, n):
    folder.mkdir()
    paths = []
    for i in range(n):
        path = folder / f"{i}.png"
        Image.new("RGB", (16, 16), (i * 20 % 256, 50, 100)).save(path)
        paths.append(str(path))
    return paths


def text_encoder():
    encoder = create_encoder("text", "tiny_text", trainable=False)
    encoder.fit(TEXTS)
    return encoder


def in_memory(encoder, values, load):
    """What the cache returned before its shards were read per batch: every input stacked. One
    input per forward pass, here and in the cache, so the numbers do not depend on batch makeup."""
    keys = [content_hash(encoder.modality, v) for v in values]
    return stack_inputs(keys, encode_inputs(encoder, list(zip(keys, values)), load, 1, "cpu"))


@pytest.mark.parametrize("modality", ["image", "text"])
def test_batches_read_from_the_shards_equal_the_in_memory_features(tmp_path, modality, monkeypatch):
    monkeypatch.setattr(cache_module, "SHARD_ITEMS", 2)  # the inputs spread over three shards
    if modality == "image":
        values, encoder = write_images(tmp_path / "img", 5), create_encoder("image", "tiny_image", trainable=False)
    else:
        values, encoder = TEXTS, text_encoder()
    load = loader(modality, DataConfig())
    stored = FeatureCache(tmp_path / "cache").features(encoder, values, load, batch_size=1)
    assert isinstance(stored, StoredFeatures) and len(set(stored.paths)) == 3
    expected = in_memory(encoder, values, load)
    index = torch.tensor([3, -1, 0, 3, 1, -1, 4])  # repeats and absent rows
    column = ModalityColumn(index=index, values=values, features=stored)
    rows = torch.arange(len(index))
    got = gather(column, rows).features
    want = gather(ModalityColumn(index=index, values=values, features=expected), rows).features
    assert torch.equal(got.pooled, want.pooled) and torch.equal(got.present, want.present)
    width = got.tokens.shape[1]
    assert torch.equal(got.tokens, want.tokens[:, :width]) and torch.equal(got.mask, want.mask[:, :width])
    assert not want.mask[:, width:].any()  # what the batch leaves out is padding only
    if modality == "text":
        assert width == 4 and expected.tokens.shape[1] == 4
        narrow = gather(column, torch.tensor([1, 2, 5])).features  # a row of 1 token, two absent ones
        assert narrow.tokens.shape[1] == 1
    loaded = stored.load()  # every input in memory, as `features` returned before
    assert torch.equal(loaded.pooled, expected.pooled) and torch.equal(loaded.tokens, expected.tokens)
    pooled_only = FeatureCache(tmp_path / "cache").features(encoder, values, load, tokens=False)
    assert pooled_only.select(torch.tensor([1, 1])).tokens is None


def test_first_layout_shards_are_read_and_rewritten_in_the_new_one(tmp_path):
    encoder, load = text_encoder(), loader("text", DataConfig())
    cache = FeatureCache(tmp_path / "cache")
    folder = cache.folder(encoder)
    folder.mkdir(parents=True)
    keys = [content_hash("text", v) for v in TEXTS]
    entries = encode_inputs(encoder, list(zip(keys, TEXTS)), load, 64, "cpu")
    old = {}  # the first layout: two tensors per input
    for key, (pooled, tokens) in entries.items():
        old[f"{key}/pooled"], old[f"{key}/tokens"] = pooled, tokens
    save_file(old, str(folder / "old.safetensors"))
    feats = cache.features(encoder, TEXTS, load)
    assert cache.last_stats["computed"] == 0 and cache.last_stats["reused"] == len(TEXTS)
    expected = stack_inputs(keys, entries)
    assert torch.equal(feats.pooled, expected.pooled) and torch.equal(feats.tokens, expected.tokens)
    assert torch.equal(feats.mask, expected.mask)
    header, _ = read_header(folder / "old.safetensors")  # rewritten in place
    assert header["__metadata__"]["format"] == FORMAT
    assert sorted(json.loads(header["__metadata__"]["keys"])) == sorted(keys)
    assert [p.name for p in folder.iterdir()] == ["old.safetensors"]


def test_an_interrupted_extraction_keeps_its_finished_shards(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module, "SHARD_ITEMS", 2)
    encoder, load = text_encoder(), loader("text", DataConfig())
    cache = FeatureCache(tmp_path / "cache")
    calls = []

    def fails_on_the_second_shard(encoder, items, load, batch_size, device):
        calls.append(len(items))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return encode_inputs(encoder, items, load, batch_size, device)

    with pytest.raises(KeyboardInterrupt):
        cache.features(encoder, TEXTS, load, encode=fails_on_the_second_shard)
    assert len(list(cache.folder(encoder).glob("*.safetensors"))) == 1
    cache.features(encoder, TEXTS, load)
    assert cache.last_stats["computed"] == 3 and cache.last_stats["reused"] == 2


def dataset_of(frame, encoders, cache=None, **options):
    return build_dataset(frame, encoders, task="classification", labels=["x"], data=DataConfig(), cache=cache,
                         group_by_image=True, **options)


def test_a_split_keeps_no_feature_matrix_in_memory(tmp_path):
    paths = write_images(tmp_path / "img", 12)
    frame = pd.DataFrame({"image": [p for p in paths for _ in range(3)], "label": "x"})
    encoder = create_encoder("image", "tiny_image", trainable=False)
    data = dataset_of(frame, {"image": encoder}, FeatureCache(tmp_path / "cache"))
    stored = data.columns["image"].features
    assert isinstance(stored, StoredFeatures)
    for first in range(0, len(frame), 9):  # every batch of the split
        batch = data[list(range(first, min(first + 9, len(frame))))]
        assert batch.modalities["image"].features.pooled.shape == (batch.size, encoder.out_dim)
    held = [v for v in vars(stored).values() if isinstance(v, (np.ndarray, torch.Tensor))]
    assert sum(a.nbytes for a in held) == 8 * len(paths)  # shard and row per input: no N x D anywhere
    assert stored._all is None  # never read whole


def trainable_encoders():
    torch.manual_seed(0)
    text = create_encoder("text", "tiny_text", trainable=True)
    text.fit(TEXTS)
    return {"image": create_encoder("image", "tiny_image", trainable=True), "text": text}


def test_decoding_per_batch_gives_the_batches_of_the_table_in_memory(tmp_path):
    paths = write_images(tmp_path / "img", 6)
    frame = pd.DataFrame({"image": [paths[i % 6] for i in range(15)], "text": [TEXTS[i % 5] for i in range(15)],
                          "label": "x"})
    frame.loc[4, "image"] = None  # a row without an image
    encoders = trainable_encoders()
    table = dataset_of(frame, encoders)
    per_batch = dataset_of(frame, encoders, prepared_memory_mb=0)
    assert table.columns["image"].prepared is not None and per_batch.columns["image"].prepared is None
    for rows in ([0, 1, 2, 3, 4], [5, 6, 13, 14], [4]):
        a, b = table[rows], per_batch[rows]
        for modality, encoder in encoders.items():
            x, y = a.modalities[modality], b.modalities[modality]
            assert torch.equal(x.present, y.present)
            if not x.present.any():  # the batch of the row without an image
                assert x.prepared is None and y.prepared is None
                continue
            assert torch.equal(x.inverse, y.inverse)
            if modality == "image":
                assert torch.equal(x.prepared["pixels"], y.prepared["pixels"])
            fx, fy = encoder.eval()(x.prepared), encoder(y.prepared)
            assert torch.allclose(fx.pooled, fy.pooled, atol=1e-6)
    whole = per_batch.columns["text"].prepared_table()  # what export and pruning read
    assert torch.equal(whole["input_ids"], table.columns["text"].prepared["input_ids"])


def test_a_file_changed_after_the_check_is_named_when_its_batch_is_decoded(tmp_path):
    paths = write_images(tmp_path / "img", 3)
    frame = pd.DataFrame({"image": paths, "label": "x"})
    data = dataset_of(frame, {"image": trainable_encoders()["image"]}, prepared_memory_mb=0)
    (tmp_path / "img" / "1.png").write_bytes(b"not a png any more")
    assert data[[0, 2]].modalities["image"].prepared["pixels"].shape[0] == 2
    with pytest.raises(DataError, match=r"image .*1\.png: cannot be read any more"):
        data[[0, 1]]


@pytest.fixture(scope="module")
def shapes_table(tmp_path_factory):
    return write_shapes_csv(tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("memory_mb, workers", [(0, 0), (0, 1)])
def test_training_with_inputs_decoded_per_batch_matches_the_table_in_memory(tmp_path, shapes_table, memory_mb,
                                                                             workers):
    def trained(memory_mb, workers):
        config = tiny_config(tmp_path / f"{memory_mb}-{workers}", shapes_table, **{
            "train.epochs": 1, "train.prepared_memory_mb": memory_mb, "train.num_workers": workers,
            "encoders.text": {"name": "tiny_text", "trainable": False}})
        predictor = Predictor(config).fit()
        return predictor.predict_scores(shapes_table)[1]

    baseline = trained(512, 0)
    assert torch.equal(trained(memory_mb, workers), baseline)


def test_the_scaler_fitted_in_chunks_equals_the_whole_statistics():
    pooled = torch.randn(101, 6) * 3 + 5
    scaler = FeatureScaler(6)
    scaler.fit(pooled.split(17))
    assert torch.allclose(scaler.mean, pooled.mean(0), atol=1e-5)
    assert torch.allclose(scaler.std, pooled.std(0), atol=1e-5)


def test_a_table_read_in_pieces_gives_the_manifest_read_whole(tmp_path, monkeypatch):
    table = write_shapes_csv(tmp_path)
    frame = pd.read_csv(table)
    frame.loc[3, "answer"] = None              # a bad label in the first piece
    frame.loc[17, "image"] = "images/missing.png"  # a missing file in a later one
    frame.to_csv(table, index=False)
    lines = table.read_bytes().split(b"\n")
    lines[41] = lines[41].replace(b"square", b"squ\xffare")  # data row 41: not UTF-8
    table.write_bytes(b"\n".join(lines))
    data = DataConfig(columns={"image": "image", "text": "question", "label": "answer"})

    def manifest():
        return load_manifest(table, data, task="classification", modalities=["image", "text"])

    whole = manifest()
    monkeypatch.setattr(manifest_module, "PIECE_ROWS", 5)
    pieces = manifest()
    pd.testing.assert_frame_equal(pieces.frame, whole.frame)
    assert [str(b) for b in pieces.bad_rows] == [str(b) for b in whole.bad_rows]
    assert [b.row for b in pieces.bad_rows] == [4, 18, 41]
    assert "invalid UTF-8 in column 'question': byte 0xff at line 42" in str(pieces.bad_rows[2])
    images = pieces.frame["image"].tolist()  # each distinct path kept once, however many rows
    assert images[0] == images[1] and images[0] is images[1]
