"""Image-caption pairs: a CSV / JSONL manifest (columns image, caption), a COCO-style captions
JSON, or the built-in easy-VQA captions derived from its question answers ("a blue rectangle").

Every source becomes one table with columns image (absolute path), caption and split (may be
empty), and goes through the same row checks as training tables (missing / broken images, empty
captions), so bad rows are reported by row number and skipped.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..config import ColumnsConfig, DataConfig
from ..data.manifest import Manifest, load_manifest, read_table
from ..errors import DataError

EASY_VQA_COLORS = ("red", "green", "blue", "black", "gray", "teal", "yellow", "brown")
EASY_VQA_SHAPES = ("circle", "rectangle", "triangle")
# The exact RGB each colour is drawn with (the shapes are flat-filled; edges are anti-aliased).
EASY_VQA_PALETTE = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "black": (0, 0, 0),
                    "gray": (128, 128, 128), "teal": (0, 128, 128), "yellow": (255, 255, 0),
                    "brown": (165, 42, 42)}
BUILTINS = ("easy_vqa",)
NEGATION = re.compile(r"\b(not|no)\b")


def easy_vqa_pairs() -> list[str]:
    """Every colour-shape label of easy-VQA ("red circle"), 24 of them."""
    return [f"{color} {shape}" for color in EASY_VQA_COLORS for shape in EASY_VQA_SHAPES]


# ----- easy-VQA: colour and shape of each image, from its questions and answers -----------------

def _facts(question: str, answer: str) -> tuple[set[str], set[str]]:
    """(words the question + answer say the image has, words they say it has not).

    "what is the red shape?" -> triangle: red and triangle are both facts. A yes/no question
    asserts the colour/shape it names when the answer agrees with its polarity ("is there not a
    blue shape?" -> no means blue), and excludes it otherwise.
    """
    named = {w for w in re.findall(r"[a-z]+", question) if w in EASY_VQA_COLORS or w in EASY_VQA_SHAPES}
    if answer not in ("yes", "no"):
        return named | {answer}, set()
    negated = bool(NEGATION.search(question))
    holds = (answer == "yes") != negated
    return (named, set()) if holds else (set(), named)


def _describe(facts: set[str], excluded: set[str], choices: tuple[str, ...]) -> str | None:
    found = [c for c in choices if c in facts]
    if len(found) == 1:
        return found[0]
    left = [c for c in choices if c not in excluded]
    return left[0] if not found and len(left) == 1 else None


def read_shape_pixels(path: str) -> tuple[str, str]:
    """(colour, shape) from the pixels: the palette colour with most pixels, and the share of its
    bounding box it fills (rectangle 1.0, circle ~0.77, triangle ~0.53)."""
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    masks = {name: np.all(pixels == rgb, axis=-1) for name, rgb in EASY_VQA_PALETTE.items()}
    color = max(masks, key=lambda name: masks[name].sum())
    ys, xs = np.nonzero(masks[color])
    if len(ys) == 0:
        raise DataError(f"{path}: no easy-VQA shape colour found in the image")
    fill = len(ys) / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    shape = "rectangle" if fill > 0.9 else "circle" if fill > 0.65 else "triangle"
    return color, shape


def easy_vqa_captions() -> pd.DataFrame:
    """One row per easy-VQA image: image, caption ("a blue rectangle"), label ("blue rectangle"),
    split. The answers fix colour and shape for ~90% of images; where its questions leave one open
    (e.g. only "is there a triangle?" -> no), it is read from the pixels (`read_shape_pixels`,
    whose colour always agrees with the answers and whose shape does on 4,991 of the 5,000 images:
    9 small triangles read as circles)."""
    from ..data.datasets import load_builtin

    table = load_builtin("easy_vqa")
    rows = []
    for (split, image), group in table.groupby(["split", "image"], sort=True):
        facts, excluded = set(), set()
        for question, answer in zip(group["question"], group["answer"]):
            has, has_not = _facts(question.lower(), str(answer).lower())
            facts |= has
            excluded |= has_not
        color = _describe(facts, excluded, EASY_VQA_COLORS)
        shape = _describe(facts, excluded, EASY_VQA_SHAPES)
        if not (color and shape):
            seen_color, seen_shape = read_shape_pixels(image)
            color, shape = color or seen_color, shape or seen_shape
        label = f"{color} {shape}"
        rows.append({"image": image, "caption": f"a {label}", "label": label, "split": split})
    return pd.DataFrame(rows)


# ----- files ------------------------------------------------------------------------------------

def read_coco_captions(path: Path, image_root: str | Path | None = None) -> pd.DataFrame:
    """COCO captions JSON: images [{id, file_name}], annotations [{image_id, caption}]."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"could not read COCO captions {path}: {error}") from None
    root = Path(image_root) if image_root else path.parent
    try:
        files = {item["id"]: item["file_name"] for item in data["images"]}
    except (KeyError, TypeError) as error:
        raise DataError(f"{path}: every entry of 'images' needs 'id' and 'file_name' ({error})") from None
    rows = []
    for number, note in enumerate(data["annotations"], start=1):
        if not isinstance(note, dict) or note.get("image_id") not in files:
            raise DataError(f"{path}: annotation {number} has no image_id listed in 'images'")
        rows.append({"image": str(root / files[note["image_id"]]), "caption": note.get("caption")})
    return pd.DataFrame(rows, columns=["image", "caption"])


def _is_coco(path: Path) -> bool:
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    with open(path, "rb") as handle:
        head = handle.read(4096).lstrip()
    return head.startswith(b"{")  # a JSON object; a records table is a list


def read_captions(source: str | Path, image_root: str | Path | None = None) -> pd.DataFrame:
    """Any caption source -> table of image (absolute path), caption, and split when it has one."""
    if str(source) in BUILTINS:
        return easy_vqa_captions()
    path = Path(source).expanduser()
    if _is_coco(path):
        table = read_coco_captions(path, image_root)
    else:
        table, name = read_table(path)
        missing = [c for c in ("image", "caption") if c not in table.columns]
        if missing:
            raise DataError(f"{name}: a captions table needs columns image and caption; missing "
                            f"{', '.join(missing)} (it has {', '.join(map(str, table.columns))})")
    base = Path(image_root) if image_root else path.resolve().parent
    table["image"] = [p if not isinstance(p, str) or os.path.isabs(p) else str(base / p) for p in table["image"]]
    return table


def load_captions(source: str | Path, *, image_root: str | Path | None = None,
                  data: DataConfig | None = None) -> Manifest:
    """Checked caption pairs: Manifest.frame has row, image, text (the caption), label, split."""
    table = read_captions(source, image_root)
    columns = ColumnsConfig(image="image", text="caption", label="label",
                            split="split" if "split" in table.columns else None)
    checks = (data or DataConfig()).model_copy(update={"columns": columns, "strict": False})
    manifest = load_manifest(table, checks, task="classification", modalities=["image", "text"],
                             require_label=False)
    manifest.source = str(source)
    rows_without = manifest.frame["image"].isna() | manifest.frame["text"].isna()
    if rows_without.any():
        first = int(manifest.frame.loc[rows_without, "row"].iloc[0])
        raise DataError(f"{source} row {first}: an alignment pair needs both an image and a caption")
    return manifest
