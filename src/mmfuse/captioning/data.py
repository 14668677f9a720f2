"""Caption data: image-caption pairs from a CSV / JSONL table, a COCO captions JSON or a built-in
set (shape_scenes, easy_vqa), checked row by row and split by image, then held as decoded pixels
plus the captions of each image.

Reading goes through `mmfuse.align.captions.read_captions` (the same sources `mmfuse align`
reads) and the manifest's row checks (missing or broken images are bad rows: skipped and counted,
or the run fails under data.strict). An empty caption fails at once, naming its row and column.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
from torch import Tensor

from ..align.captions import read_captions
from ..config import CaptionConfig, ColumnsConfig, DataConfig
from ..data import scenes as scene_generator
from ..data.manifest import Manifest, load_manifest, split_manifest
from ..data.media import open_image
from ..data.scene_captions import CAPTIONS_PER_IMAGE, CAPTIONS_VERSION, caption_table
from ..errors import DataError

log = logging.getLogger(__name__)

BUILTIN = ("shape_scenes", "easy_vqa")


@dataclass
class CaptionSet:
    """One entry per image: its path, its pixels (uint8, the encoder's size) and its captions."""

    images: list[str]
    pixels: Tensor  # (N, 3, H, W) uint8
    captions: list[list[str]]

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: Sequence[int]) -> "CaptionSet":
        return CaptionSet([self.images[i] for i in index], self.pixels[list(index)], [self.captions[i] for i in index])


def shape_scenes_source(seed: int = 0) -> Path:
    """The shape_scenes caption CSV (written on first use beside the scenes' images)."""
    caption_table(seed)
    folder = scene_generator.scenes_folder(seed=seed)
    return folder / f"captions-{CAPTIONS_VERSION}-k{CAPTIONS_PER_IMAGE}.csv"


def check_captions(table: pd.DataFrame, name: str) -> None:
    """An empty caption is an error naming its row (1-based, as the table counts data rows)."""
    for row, caption in enumerate(table["caption"], start=1):
        if not isinstance(caption, str) or not caption.strip():
            raise DataError(f"{name} row {row}, column 'caption': empty caption")


def read_pairs(source: str, *, image_root: str | None = None, data: DataConfig | None = None) -> Manifest:
    """Checked pairs: Manifest.frame has row, image (path), text (the caption), split."""
    data = data or DataConfig()
    name = str(source)
    if source == "shape_scenes":
        source = name = str(shape_scenes_source())
    elif source not in BUILTIN and not Path(source).expanduser().is_file():
        raise DataError(f"caption.captions: {source} does not exist (a CSV / JSONL of image, caption, "
                        f"a COCO captions JSON, or one of {', '.join(BUILTIN)})")
    table = read_captions(source, image_root)
    check_captions(table, name)
    split = "split" if "split" in table.columns else None
    checks = data.model_copy(update={"columns": ColumnsConfig(image="image", text="caption", label="label",
                                                              split=split), "strict": False})
    manifest = load_manifest(table, checks, task="classification", modalities=["image", "text"],
                             require_label=False)
    manifest.bad_rows = [replace(bad, source=name) for bad in manifest.bad_rows]
    manifest.source = name
    if manifest.bad_rows:
        if data.strict:
            raise DataError(f"{manifest.bad_rows[0]} (data.strict: {len(manifest.bad_rows)} bad rows)")
        log.warning("%d bad caption rows skipped, the first: %s", len(manifest.bad_rows), manifest.bad_rows[0])
    if manifest.frame.empty:
        raise DataError(f"{name}: no usable image-caption pair")
    return manifest


def split_pairs(manifest: Manifest, caption: CaptionConfig, data: DataConfig) -> dict[str, pd.DataFrame]:
    """train / val / test rows; every caption of one image on the same side. A split column wins;
    a missing val (or test) split is carved from the training images."""
    checks = data.model_copy(update={"val_fraction": caption.val_fraction, "test_fraction": caption.test_fraction,
                                     "group_split_by_image": True})
    return split_manifest(manifest, checks)


def caption_set(frame: pd.DataFrame, prepare, max_pixels: int) -> CaptionSet:
    """Group rows by image (first-seen order) and decode each image once with `prepare`."""
    if frame.empty:
        return CaptionSet([], torch.zeros(0, 3, 1, 1, dtype=torch.uint8), [])
    grouped = frame.groupby("image", sort=False)["text"].agg(list)
    images = list(grouped.index)
    pixels = [prepare([open_image(path, max_pixels=max_pixels)])["pixels"] for path in images]
    return CaptionSet(images, torch.cat(pixels), [list(c) for c in grouped])
