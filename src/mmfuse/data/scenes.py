"""`shape_scenes`: a second built-in VQA set, from our own generator rather than easy-VQA's.

easy-VQA draws one shape per image and asks about its colour or shape (or whether it is there).
A fusion ranking measured only there could be an artefact of that single-object design, so this
set differs in kind: 1–3 objects per scene at random places and sizes, on a noisy background, and
questions that need counting, attribute binding ("what color is the triangle?"), conjunctions
("is there a green circle?") and left/right order. Answers: counts 0–3, yes/no, colours, shapes.

Generated once, deterministically from a seed, as PNG files plus a CSV under
`$MMFUSE_DATA` (default `~/.cache/mmfuse/data`); a marker file says the set is complete.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

VERSION = "v1"
SIZE = 64
COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
          "yellow": (230, 200, 30), "purple": (140, 60, 190), "gray": (128, 128, 128)}
SHAPES = ("circle", "square", "triangle")
SPLITS = {"train": 3000, "test": 600}
QUESTIONS_PER_IMAGE = 6


def data_root() -> Path:
    return Path(os.environ.get("MMFUSE_DATA", Path.home() / ".cache" / "mmfuse" / "data"))


def scenes_folder(root: Path | None = None, seed: int = 0) -> Path:
    """Where the scenes of one seed live: images, questions.csv, the caption sets."""
    return Path(root or data_root()) / f"shape_scenes-{VERSION}-s{seed}"


def load_shape_scenes(root: Path | None = None, seed: int = 0) -> pd.DataFrame:
    """The table (image, question, answer, split), generating the images on first use."""
    folder = scenes_folder(root, seed)
    table = folder / "questions.csv"
    if not (folder / "COMPLETE").is_file():
        generate(folder, seed)
    frame = pd.read_csv(table, keep_default_na=False)
    frame["image"] = [str(folder / p) for p in frame["image"]]
    return frame


def scenes(seed: int = 0) -> Iterator[tuple[str, list[dict], Image.Image, list[tuple[str, str]]]]:
    """(image name, objects with their boxes, image, questions) of every scene, in the order and
    with the random draws `generate` makes: replaying it gives the boxes of the written images."""
    rng = random.Random(seed)
    for split, count in SPLITS.items():
        for index in range(count):
            objects = place_objects(rng)
            image = draw_scene(objects, rng)
            yield f"{split}/{index}.png", objects, image, ask(objects, rng)


def generate(folder: Path, seed: int) -> None:
    rows = []
    for name, _objects, image, questions in scenes(seed):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(folder / name)
        rows += [{"image": name, "question": q, "answer": a, "split": name.split("/")[0]} for q, a in questions]
    pd.DataFrame(rows).to_csv(folder / "questions.csv", index=False)
    (folder / "COMPLETE").write_text(f"{len(rows)} questions\n")


def place_objects(rng: random.Random) -> list[dict]:
    """1–3 objects whose bounding boxes do not overlap (so each stays recognisable)."""
    objects: list[dict] = []
    for _ in range(rng.randint(1, 3)):
        for _attempt in range(50):
            size = rng.randint(14, 22)
            x, y = rng.randint(1, SIZE - size - 1), rng.randint(1, SIZE - size - 1)
            box = (x, y, x + size, y + size)
            if all(box[2] < o["box"][0] or o["box"][2] < box[0] or box[3] < o["box"][1] or o["box"][3] < box[1]
                   for o in objects):
                objects.append({"shape": rng.choice(SHAPES), "color": rng.choice(list(COLORS)), "box": box})
                break
    return objects


def draw_scene(objects: list[dict], rng: random.Random) -> Image.Image:
    noise = np.random.default_rng(rng.getrandbits(32)).integers(225, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
    image = Image.fromarray(noise, "RGB")
    draw = ImageDraw.Draw(image)
    for obj in objects:
        x0, y0, x1, y1 = obj["box"]
        fill = COLORS[obj["color"]]
        if obj["shape"] == "circle":
            draw.ellipse(obj["box"], fill=fill)
        elif obj["shape"] == "square":
            draw.rectangle(obj["box"], fill=fill)
        else:
            draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=fill)
    return image


def ask(objects: list[dict], rng: random.Random) -> list[tuple[str, str]]:
    """Up to QUESTIONS_PER_IMAGE distinct (question, answer) pairs about one scene."""
    shapes = [o["shape"] for o in objects]
    colors = [o["color"] for o in objects]
    candidates = [("how many shapes are there?", str(len(objects)))]
    color = rng.choice(colors if rng.random() < 0.5 else list(COLORS))
    candidates.append((f"how many {color} shapes are there?", str(colors.count(color))))
    shape = rng.choice(shapes if rng.random() < 0.5 else list(SHAPES))
    candidates.append((f"how many {shape}s are there?", str(shapes.count(shape))))
    # Half the conjunction questions name an object that is there, so yes and no are balanced.
    if rng.random() < 0.5:
        target = rng.choice(objects)
        pair = (target["color"], target["shape"])
    else:
        pair = (rng.choice(list(COLORS)), rng.choice(SHAPES))
    present = any((o["color"], o["shape"]) == pair for o in objects)
    candidates.append((f"is there a {pair[0]} {pair[1]}?", "yes" if present else "no"))
    unique_shapes = [s for s in set(shapes) if shapes.count(s) == 1]
    if unique_shapes:
        s = rng.choice(sorted(unique_shapes))
        candidates.append((f"what color is the {s}?", colors[shapes.index(s)]))
    unique_colors = [c for c in set(colors) if colors.count(c) == 1]
    if unique_colors:
        c = rng.choice(sorted(unique_colors))
        candidates.append((f"what shape is the {c} object?", shapes[colors.index(c)]))
    if len(objects) > 1:
        leftmost = min(objects, key=lambda o: o["box"][0])
        candidates.append(("what color is the leftmost shape?", leftmost["color"]))
    rng.shuffle(candidates)
    return candidates[:QUESTIONS_PER_IMAGE]
