"""Shared fixtures: a tiny synthetic image + question table (no download, generated with PIL)."""
from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220)}


def make_shapes_table(folder: Path, n_images: int = 36, seed: int = 0, size: int = 16) -> pd.DataFrame:
    """Coloured squares on a grey background; questions about the colour.

    Colour questions need the image; "is it X?" needs both modalities, so fusion matters.
    """
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_images):
        color = list(COLORS)[i % 3]
        image = Image.new("RGB", (size, size), (128, 128, 128))
        x, y = rng.randint(0, size // 2), rng.randint(0, size // 2)
        image.paste(COLORS[color], (x, y, x + size // 2, y + size // 2))
        path = folder / f"img{i}.png"
        image.save(path)
        rows.append({"image": path.name, "question": "what color is the square?", "answer": color})
        asked = rng.choice(list(COLORS))
        rows.append({"image": path.name, "question": f"is the square {asked}?",
                     "answer": "yes" if asked == color else "no"})
    return pd.DataFrame(rows)


def write_shapes_csv(folder: Path) -> Path:
    """folder/table.csv over folder/images/*.png, image paths relative to the table."""
    frame = make_shapes_table(folder / "images")
    frame["image"] = "images/" + frame["image"]
    path = folder / "table.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def shapes_csv(tmp_path: Path) -> Path:
    return write_shapes_csv(tmp_path)


def tiny_config(tmp_path: Path, source: Path | str, **overrides) -> dict:
    """A config dict for the tiny random encoders; fast enough for unit tests."""
    config = {
        "task": "classification",
        "data": {"source": str(source), "columns": {"image": "image", "text": "question", "label": "answer"},
                 "val_fraction": 0.2, "test_fraction": 0.2},
        "encoders": {"image": {"name": "tiny_image", "image_size": 16}, "text": {"name": "tiny_text"}},
        "fusion": {"name": "concat", "dim": 16},
        "head": {"hidden": 16},
        "train": {"epochs": 2, "batch_size": 8, "lr": 0.01, "progress_bar": False, "schedule": "cosine"},
        "output_dir": str(tmp_path / "run"),
        "cache_dir": str(tmp_path / "cache"),
    }
    for key, value in overrides.items():
        node = config
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return config
