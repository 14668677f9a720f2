"""`shape_scenes_tasks`: the shape_scenes questions with more labels per row, for multi-task models.

Beside each question's answer, the generator's knowledge of the scene gives:
- `question_type`: what the question asks (count, exists, colour, shape, order), read from its words;
- `objects`: every (colour, kind) in the scene, "|"-separated ("blue square|red circle"): a
  multi-label task about the image alone, the attributes of each shape;
- `shape_count`: how many shapes the scene has (1-3).
Written once beside the scenes' questions.csv (same rows, same split).
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ..atomic import write_atomic
from . import scenes as scene_generator

TASKS_VERSION = "v1"  # bump when the columns change: the written table is named by it

# The question templates of scenes.ask, by what they ask.
QUESTION_TYPES = (
    (re.compile(r"^how many "), "count"),
    (re.compile(r"^is there "), "exists"),
    (re.compile(r"^what color is the leftmost "), "order"),
    (re.compile(r"^what color "), "colour"),
    (re.compile(r"^what shape "), "shape"),
)


def question_type(question: str) -> str:
    for pattern, kind in QUESTION_TYPES:
        if pattern.search(question):
            return kind
    raise ValueError(f"not a shape_scenes question: {question!r}")


def task_table(seed: int = 0, root: Path | None = None) -> pd.DataFrame:
    """questions.csv's rows with question_type, objects and shape_count (image as an absolute path)."""
    from .scene_captions import iter_scenes

    folder = scene_generator.scenes_folder(root, seed)
    path = folder / f"tasks-{TASKS_VERSION}.csv"
    if not path.is_file():
        frame = scene_generator.load_shape_scenes(root, seed)  # the images, generated on first use
        scenes = {scene.image: scene.objects for scene in iter_scenes(seed)}
        names = [str(Path(p).relative_to(folder)) for p in frame["image"]]
        frame["image"] = names
        frame["question_type"] = [question_type(q) for q in frame["question"]]
        frame["objects"] = ["|".join(sorted({f"{o.color} {o.shape}" for o in scenes[n]})) for n in names]
        frame["shape_count"] = [str(len(scenes[n])) for n in names]
        write_atomic(path, frame.to_csv(index=False))  # whole or absent: no marker file needed
    frame = pd.read_csv(path, keep_default_na=False, dtype=str)
    frame["image"] = [str(folder / p) for p in frame["image"]]
    return frame
