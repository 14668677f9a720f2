"""Data layer: safe media decoding, manifests with bad-row reports, splits, the easy-VQA built-in.

Every media file is generated here, tiny, with PIL (the 20000×20000 "bomb" is a hand-written
PNG of a few KB), so the whole file runs in a few seconds on a busy 2-core machine.
"""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mmfuse.config import ColumnsConfig, DataConfig
from mmfuse.data import (
    MediaError, builtin_names, check_image, clean_text, easy_vqa_answers, load_builtin,
    load_manifest, read_table, split_manifest,
)
from mmfuse.data import manifest as manifest_module
from mmfuse.modalities import MODALITIES
from mmfuse.data.media import open_image
from mmfuse.errors import ConfigError, DataError

MAX = 50_000_000  # DataConfig's default max_pixels


# ----- media fixtures -------------------------------------------------------------------------

def write_huge_png(path: Path, width: int = 20_000, height: int = 20_000) -> None:
    """A valid, all-black 1-bit PNG of width×height, written chunk by chunk.

    PIL would hold the full image in memory (one byte per pixel even in mode "1": 400 MB) just
    to save it, so the IDAT stream is deflated directly from a reused row buffer; the file is
    ~50 KB and takes a fraction of a second.
    """
    def chunk(tag: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    block = row * 1000
    deflate = zlib.compressobj(6)
    idat = b"".join(deflate.compress(block) for _ in range(height // 1000))
    idat += deflate.compress(row * (height % 1000)) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("media")
    imgs = root / "imgs"
    imgs.mkdir()
    files: dict[str, Path] = {}

    def at(name: str) -> Path:
        files[name.split(".")[0]] = imgs / name
        return imgs / name

    Image.new("RGB", (8, 6), (200, 30, 30)).save(at("good.png"))
    Image.new("RGB", (8, 6), (30, 200, 30)).save(at("good2.png"))
    # Noise, so the compressed stream is long enough that cutting it in half loses pixel data.
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "full.png")
    data = (root / "full.png").read_bytes()
    at("truncated.png").write_bytes(data[: len(data) // 2])
    at("page.jpg").write_text("<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body></body></html>")
    write_huge_png(at("bomb.png"))
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(at("cmyk.jpg"), quality=95)  # pure red in CMYK
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # index 0 black (transparent), 1 red
    palette.putpixel((0, 0), 1)
    palette.save(at("palette.png"), transparency=0)
    wide = np.full((5, 7), 65535, dtype=np.uint16)
    wide[0, 0] = 0
    Image.fromarray(wide).save(at("deep16.png"))  # 16-bit greyscale PNG
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    Image.new("RGB", (40, 20), (0, 0, 255)).save(at("rotated.jpg"), exif=exif.tobytes())
    Image.new("LA", (3, 3), (100, 0)).save(at("la.png"))  # fully transparent grey
    return files


# ----- media ----------------------------------------------------------------------------------

def test_open_image_normalises_modes_and_orientation(media):
    for name in ("good", "cmyk", "palette", "deep16", "rotated", "la"):
        image = open_image(media[name], max_pixels=MAX)
        assert image.mode == "RGB", name
    red = open_image(media["cmyk"], max_pixels=MAX).getpixel((4, 4))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60  # CMYK converted, not inverted
    palette = open_image(media["palette"], max_pixels=MAX)
    assert palette.getpixel((0, 0)) == (255, 0, 0)
    assert palette.getpixel((1, 1)) == (255, 255, 255)  # transparent -> white, not black
    deep = open_image(media["deep16"], max_pixels=MAX)
    assert deep.getpixel((1, 1)) == (255, 255, 255) and deep.getpixel((0, 0)) == (0, 0, 0)  # scaled, not clipped
    assert open_image(media["rotated"], max_pixels=MAX).size == (20, 40)  # EXIF orientation applied
    assert open_image(media["la"], max_pixels=MAX).getpixel((1, 1)) == (255, 255, 255)


def test_open_image_reasons(media, tmp_path):
    def reason(path, max_pixels=MAX):
        with pytest.raises(MediaError) as error:
            open_image(path, max_pixels=max_pixels)
        return str(error.value)

    assert reason(tmp_path / "nope.png") == f"file not found: {tmp_path / 'nope.png'}"
    assert reason(media["truncated"]).startswith("truncated or corrupt image")
    assert reason(media["page"]) == "not an image (looks like HTML)"
    assert reason(media["bomb"]).startswith("image too large")
    # Below PIL's own limit, our header check rejects it (before decoding) with the dimensions.
    assert reason(media["good"], max_pixels=40) == "image too large: 8×6 = 48 pixels (max_pixels is 40)"
    (tmp_path / "notes.png").write_text("just some notes\n")
    assert reason(tmp_path / "notes.png") == "not an image (looks like text)"
    (tmp_path / "empty.png").write_bytes(b"")
    assert reason(tmp_path / "empty.png") == "empty file"
    assert check_image(media["good"], max_pixels=MAX) is None
    assert check_image(media["page"], max_pixels=MAX) == "not an image (looks like HTML)"


def test_clean_text():
    assert clean_text("  a cat \n", max_chars=100) == "a cat"
    assert clean_text("x" * 50, max_chars=10) == "x" * 10  # truncated, not an error
    assert clean_text(42, max_chars=10) == "42"
    for blank in ("", "   \t\n"):
        with pytest.raises(MediaError, match="empty text"):
            clean_text(blank, max_chars=10)


# ----- manifests ------------------------------------------------------------------------------

def labelled_csv(media, tmp_path) -> Path:
    """A manifest next to the images' parent folder, with relative paths, one case per row."""
    base = media["good"].parent.parent
    rows = [  # row number (1-based, header excluded) -> case
        ("imgs/good.png", "a red square", "cat"),  # 1 good
        ("imgs/missing.png", "gone", "cat"),  # 2 missing file
        ("imgs/truncated.png", "cut", "cat"),  # 3 truncated
        ("imgs/page.jpg", "html", "cat"),  # 4 HTML named .jpg
        ("imgs/bomb.png", "huge", "cat"),  # 5 decompression bomb
        ("imgs/good.png", "   ", "cat"),  # 6 present but blank text
        ("imgs/good.png", "a zebra", "zebra"),  # 7 label outside the fixed set
        ("imgs/cmyk.jpg", "cmyk", "dog"),  # 8 good
        ("imgs/palette.png", "palette", "dog"),  # 9 good
        ("imgs/deep16.png", "sixteen bits", "dog"),  # 10 good
        ("imgs/rotated.jpg", "rotated", "dog"),  # 11 good
        ("", "no picture here", "cat"),  # 12 image absent: kept
        ("imgs/good2.png", "", "dog"),  # 13 text absent: kept
        ("", "", "cat"),  # 14 nothing at all
        ("imgs/good2.png", "unlabelled", ""),  # 15 missing label
    ]
    frame = pd.DataFrame(rows, columns=["img_path", "caption", "tag"])
    path = base / "train.csv"
    frame.to_csv(path, index=False)
    return path


def config(**changes) -> DataConfig:
    changes.setdefault("columns", ColumnsConfig(image="img_path", text="caption", label="tag"))
    return DataConfig(**changes)


EXPECTED_BAD = {
    2: ("image", "file not found"),
    3: ("image", "truncated or corrupt image"),
    4: ("image", "not an image (looks like HTML)"),
    5: ("image", "image too large"),
    6: ("text", "empty text"),
    7: ("label", "label not in the label set"),
    14: ("row", "no image and no text"),
    15: ("label", "missing label"),
}


def test_manifest_reports_bad_rows_and_keeps_good_ones(media, tmp_path, monkeypatch):
    path = labelled_csv(media, tmp_path)
    monkeypatch.chdir(tmp_path)  # relative paths must resolve against the manifest, not the cwd
    manifest = load_manifest(path, config(), task="classification", modalities=["image", "text"],
                             labels=["cat", "dog"])
    bad = {b.row: (b.field, b.reason) for b in manifest.bad_rows}
    assert set(bad) == set(EXPECTED_BAD)
    for row, (field, start) in EXPECTED_BAD.items():
        assert bad[row][0] == field and bad[row][1].startswith(start), (row, bad[row])
    assert all(b.source == "train.csv" for b in manifest.bad_rows)
    frame = manifest.frame
    assert frame["row"].tolist() == [1, 8, 9, 10, 11, 12, 13]
    imgs = media["good"].parent
    assert frame["image"].tolist()[:5] == [str(imgs / n) for n in
                                           ("good.png", "cmyk.jpg", "palette.png", "deep16.png", "rotated.jpg")]
    assert frame.loc[frame["row"] == 12, "image"].item() is None  # image modality absent
    assert frame.loc[frame["row"] == 12, "text"].item() == "no picture here"
    assert frame.loc[frame["row"] == 13, "text"].item() is None  # text modality absent
    assert frame["label"].tolist() == ["cat", "dog", "dog", "dog", "dog", "cat", "dog"]
    missing = next(b for b in manifest.bad_rows if b.row == 2)
    assert str(missing) == f"train.csv row 2, image column 'img_path': file not found: {imgs / 'missing.png'}"
    assert manifest.summary().startswith("15 rows read, 7 good, 8 bad (reasons counted: ")
    assert "file not found ×1" in manifest.summary()

    with pytest.raises(DataError) as error:
        load_manifest(path, config(strict=True), task="classification", modalities=["image", "text"],
                      labels=["cat", "dog"])
    message = str(error.value)
    for row in EXPECTED_BAD:
        assert f"train.csv row {row}" in message
    assert "looks like HTML" in message and "image too large" in message


def test_labels_from_config_and_strict_list_is_capped(tmp_path):
    rows = pd.DataFrame({"text": [f"t{i}" for i in range(60)], "label": ["x"] * 60})
    with pytest.raises(DataError) as error:
        load_manifest(rows, DataConfig(labels=["a"], strict=True), task="classification", modalities=["text"])
    assert "DataFrame row 50," in str(error.value) and "… and 10 more" in str(error.value)
    assert "DataFrame row 51," not in str(error.value)


def test_jsonl_and_parquet_read_the_same_rows_as_csv(media, tmp_path):
    path = labelled_csv(media, tmp_path)
    table, name = read_table(path)
    assert name == "train.csv"
    table.to_json(path.with_suffix(".jsonl"), orient="records", lines=True)
    table.to_parquet(path.with_suffix(".parquet"))
    frames = [load_manifest(path.with_suffix(ext), config(), task="classification",
                            modalities=["image", "text"], labels=["cat", "dog"])
              for ext in (".csv", ".jsonl", ".parquet")]
    for other in frames[1:]:
        pd.testing.assert_frame_equal(frames[0].frame, other.frame)
        assert [(b.row, b.reason) for b in other.bad_rows] == [(b.row, b.reason) for b in frames[0].bad_rows]


def test_unreadable_tables(tmp_path):
    with pytest.raises(DataError, match="table file not found: .*nope.csv"):
        read_table(tmp_path / "nope.csv")
    (tmp_path / "t.xlsx").write_text("x")
    with pytest.raises(DataError, match="unsupported table format"):
        read_table(tmp_path / "t.xlsx")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="could not read table .*bad.parquet"):
        read_table(tmp_path / "bad.parquet")


def test_missing_column_names_it_and_lists_existing(media, tmp_path):
    path = labelled_csv(media, tmp_path)
    cfg = config(columns=ColumnsConfig(image="image", text="caption", label="tag"))
    with pytest.raises(DataError) as error:
        load_manifest(path, cfg, task="classification", modalities=["image", "text"])
    message = str(error.value)
    assert "column 'image' (data.columns.image) not found" in message
    assert "'img_path', 'caption', 'tag'" in message


def test_each_unique_image_is_checked_once(media, monkeypatch):
    calls = []
    monkeypatch.setattr(MODALITIES["image"], "check", lambda path, data: calls.append(path))
    rows = pd.DataFrame({"image": [str(media["good"])] * 10 + [str(media["good2"])],
                         "text": [f"q{i}" for i in range(11)], "label": ["a"] * 11})
    manifest = load_manifest(rows, DataConfig(), task="classification", modalities=["image", "text"])
    assert len(manifest.frame) == 11 and sorted(calls) == sorted([str(media["good"]), str(media["good2"])])


def test_multilabel_and_regression_labels(monkeypatch):
    monkeypatch.setattr(MODALITIES["image"], "check", lambda path, data: None)
    texts = ["a", "b", "c", "d", "e"]
    multi = pd.DataFrame({"text": texts, "label": ["cat|dog", " dog | | cat|dog ", "bird", "|", None]})
    manifest = load_manifest(multi, DataConfig(), task="multilabel", modalities=["text"], labels=["cat", "dog"])
    assert manifest.frame["label"].tolist() == [["cat", "dog"], ["dog", "cat"]]
    assert [(b.row, b.reason) for b in manifest.bad_rows] == [
        (3, "label not in the label set: 'bird'"), (4, "missing label"), (5, "missing label")]
    # JSON / Parquet may carry real lists; a custom separator is honoured.
    listed = pd.DataFrame({"text": ["a", "b"], "label": [["x", "y"], "x;z"]})
    manifest = load_manifest(listed, DataConfig(label_separator=";"), task="multilabel", modalities=["text"])
    assert manifest.frame["label"].tolist() == [["x", "y"], ["x", "z"]]

    reg = pd.DataFrame({"text": texts, "label": ["1.5", " -2 ", "abc", "inf", 3]})
    manifest = load_manifest(reg, DataConfig(), task="regression", modalities=["text"])
    assert manifest.frame["label"].tolist() == [1.5, -2.0, 3.0]
    assert manifest.frame["label"].dtype == np.float64
    assert [b.reason for b in manifest.bad_rows] == [
        "non-numeric regression target: 'abc'", "non-finite regression target: 'inf'"]

    # Integer labels that became floats (one empty cell) still read as "1", not "1.0".
    numeric = pd.DataFrame({"text": ["a", "b", "c"], "label": [1.0, np.nan, 2.0]})
    manifest = load_manifest(numeric, DataConfig(), task="classification", modalities=["text"])
    assert manifest.frame["label"].tolist() == ["1", "2"]


def test_prediction_tables_need_no_label():
    rows = pd.DataFrame({"text": ["a", "b"]})
    manifest = load_manifest(rows, DataConfig(), task="classification", modalities=["text"], require_label=False)
    assert manifest.frame["label"].tolist() == [None, None] and not manifest.bad_rows
    with pytest.raises(DataError, match="column 'label'"):
        load_manifest(rows, DataConfig(), task="classification", modalities=["text"])


def test_prediction_tables_lack_a_modality_only_when_it_is_left_out():
    """A prediction table needs no split column; an input column it lacks is an error (a model
    answering without it answers wrong without a word) unless bound to None on purpose."""
    rows = pd.DataFrame({"question": ["what color?"]})
    data = DataConfig(columns={"image": "image", "text": "question", "label": "answer", "split": "split"})
    with pytest.raises(DataError, match="column 'image' .*not found; the table has 1 columns: 'question'"):
        load_manifest(rows, data, task="classification", modalities=["image", "text"], require_label=False)
    without_image = DataConfig(columns={"image": None, "text": "question", "label": "answer", "split": "split"})
    manifest = load_manifest(rows, without_image, task="classification", modalities=["image", "text"],
                             require_label=False)
    assert manifest.frame["image"].tolist() == [None] and manifest.frame["text"].tolist() == ["what color?"]
    with pytest.raises(DataError, match="column 'image'.*column 'question'"):
        load_manifest(pd.DataFrame({"other": [1]}), data, task="classification", modalities=["image", "text"],
                      require_label=False)
    with pytest.raises(DataError, match="column 'split'"):  # training still needs what the config names
        load_manifest(rows.assign(image=None, answer="red"), data, task="classification",
                      modalities=["image", "text"])


def test_overlong_text_is_truncated():
    rows = pd.DataFrame({"text": ["word " * 100], "label": ["a"]})
    manifest = load_manifest(rows, DataConfig(max_text_chars=12), task="classification", modalities=["text"])
    assert manifest.frame["text"].item() == "word word wo" and not manifest.bad_rows


# ----- splits ---------------------------------------------------------------------------------

def grouped_manifest(n_images: int = 40, per_image: int = 5, split=None):
    rows = [{"image": f"/data/{i}.png", "text": f"q{j}", "label": "a", "split": None}
            for i in range(n_images) for j in range(per_image)]
    frame = pd.DataFrame(rows)
    frame.insert(0, "row", range(1, len(frame) + 1))
    if split is not None:
        frame["split"] = split(frame)
    return manifest_module.Manifest(frame=frame, bad_rows=[], source="DataFrame")


def images(frame):
    return set(frame["image"])


def test_split_is_grouped_by_image_and_deterministic():
    manifest = grouped_manifest()
    cfg = DataConfig(val_fraction=0.2, test_fraction=0.2, split_seed=3)
    parts = split_manifest(manifest, cfg)
    assert sum(len(p) for p in parts.values()) == 200
    assert all(len(p) >= 30 for p in parts.values())
    assert not (images(parts["train"]) & images(parts["val"]) or images(parts["train"]) & images(parts["test"])
                or images(parts["val"]) & images(parts["test"]))
    again = split_manifest(manifest, cfg)
    for name in parts:
        pd.testing.assert_frame_equal(parts[name], again[name])
    # Row order does not matter, the seed does.
    shuffled = manifest_module.Manifest(frame=manifest.frame.sample(frac=1, random_state=1), bad_rows=[])
    assert images(split_manifest(shuffled, cfg)["val"]) == images(parts["val"])
    other = split_manifest(manifest, DataConfig(val_fraction=0.2, test_fraction=0.2, split_seed=4))
    assert images(other["val"]) != images(parts["val"])
    # Without grouping, rows of one image may land on both sides.
    loose = split_manifest(manifest, DataConfig(val_fraction=0.5, group_split_by_image=False))
    assert images(loose["train"]) & images(loose["val"])


def test_split_column_is_honoured_and_val_carved_from_train():
    def given(frame):
        return ["TEST" if i < 50 else ("Valid" if i < 70 else "train") for i in range(len(frame))]

    parts = split_manifest(grouped_manifest(split=given), DataConfig(val_fraction=0.5))
    assert len(parts["test"]) == 50 and len(parts["val"]) == 20 and len(parts["train"]) == 130

    def no_val(frame):
        return ["test" if i < 50 else "train" for i in range(len(frame))]

    parts = split_manifest(grouped_manifest(split=no_val), DataConfig(val_fraction=0.2))
    assert len(parts["test"]) == 50
    assert len(parts["val"]) == 30 and len(parts["train"]) == 120  # 20% of the 150 train rows
    assert not images(parts["train"]) & images(parts["val"])
    assert set(parts["val"]["split"]) == {"train"}  # carved out of train, not out of test


# ----- built-in data sets ---------------------------------------------------------------------

def test_easy_vqa_builtin():
    assert builtin_names() == ["easy_vqa", "shape_scenes", "shape_scenes_tasks", "easy_vqa_spoken"]
    table = load_builtin("easy_vqa")
    assert list(table.columns) == ["image", "question", "answer", "split"]
    counts = table["split"].value_counts()
    assert counts["train"] == 38_575 and counts["test"] == 9_673
    assert table.groupby("split")["image"].nunique().to_dict() == {"test": 1_000, "train": 4_000}
    paths = table["image"].unique()
    assert all(os.path.isabs(p) and os.path.isfile(p) for p in paths)  # exists, not decoded
    answers = easy_vqa_answers()
    assert len(answers) == 13 and answers[:3] == ["circle", "green", "red"]
    assert set(table["answer"]) == set(answers)
    with pytest.raises(ConfigError, match="unknown built-in data set 'nope'"):
        load_builtin("nope")


def test_easy_vqa_through_the_manifest_uses_its_own_columns(monkeypatch):
    # A small slice keeps this fast: only ~3 images get decoded.
    small = load_builtin("easy_vqa").groupby("split").head(25).reset_index(drop=True)
    monkeypatch.setattr(manifest_module, "load_builtin", lambda name: small.copy())
    manifest = load_manifest("easy_vqa", DataConfig(), task="classification",
                             modalities=["image", "text"], labels=easy_vqa_answers())
    assert len(manifest.frame) == 50 and not manifest.bad_rows
    assert manifest.frame["text"].iloc[0] == small["question"].iloc[0]
    assert set(manifest.frame["split"]) == {"train", "test"}
    parts = split_manifest(manifest, DataConfig(val_fraction=0.3))
    assert len(parts["test"]) == 25 and len(parts["val"]) > 0
    assert not images(parts["train"]) & images(parts["val"])
