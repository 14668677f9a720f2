"""Built-in data sets, addressable by name wherever a table path is accepted (`data.source`).

Each built-in comes as a plain table (absolute image paths + text + label + split) so it goes
through exactly the same manifest checks as a user's CSV.
"""
from __future__ import annotations

import functools
import os

import pandas as pd

from ..errors import ConfigError, DataError

__all__ = ["builtin_names", "builtin_columns", "load_builtin", "easy_vqa_answers"]

# The column each role reads in a built-in table. The manifest uses these for any role the user
# did not set explicitly, so `data.source: easy_vqa` works with the default `columns`.
_COLUMNS: dict[str, dict[str, str]] = {
    "easy_vqa": {"image": "image", "text": "question", "label": "answer", "split": "split"},
    # Our own generator (data/scenes.py): multi-object scenes, counting / binding / order questions.
    "shape_scenes": {"image": "image", "text": "question", "label": "answer", "split": "split"},
    # shape_scenes with question_type, objects (multi-label) and shape_count beside the answer (data/scene_tasks.py).
    "shape_scenes_tasks": {"image": "image", "text": "question", "label": "answer", "split": "split"},
    # easy-VQA with each question also spoken by espeak-ng (data/spoken.py); some voices held out.
    "easy_vqa_spoken": {"image": "image", "audio": "audio", "text": "question", "label": "answer", "split": "split"},
}


def builtin_names() -> list[str]:
    return list(_COLUMNS)


def builtin_columns(name: str) -> dict[str, str]:
    """{role: column} for a built-in table (roles: image, text, label, split; audio where spoken)."""
    _check_name(name)
    return dict(_COLUMNS[name])


def _check_name(name: str) -> None:
    if name not in _COLUMNS:
        raise ConfigError(f"unknown built-in data set {name!r}; built-ins: {', '.join(builtin_names())}")


def _easy_vqa():
    try:
        import easy_vqa
    except ImportError:
        raise DataError("the easy_vqa data set needs the `easy-vqa` package: pip install easy-vqa") from None
    return easy_vqa


def load_builtin(name: str) -> pd.DataFrame:
    """A built-in data set as a table. A fresh copy each call, so callers may modify it."""
    _check_name(name)
    return _load(name).copy()


@functools.lru_cache(maxsize=None)
def _load(name: str) -> pd.DataFrame:
    # Cached: reading ~48k questions from JSON is cheap but happens on every split/read call.
    if name == "easy_vqa":
        return _load_easy_vqa()
    if name == "shape_scenes":
        from .scenes import load_shape_scenes

        return load_shape_scenes()
    if name == "shape_scenes_tasks":
        from .scene_tasks import task_table

        return task_table()
    if name == "easy_vqa_spoken":
        from .spoken import load_easy_vqa_spoken

        return load_easy_vqa_spoken()
    raise AssertionError(name)  # pragma: no cover - _check_name guards this


def _load_easy_vqa() -> pd.DataFrame:
    easy_vqa = _easy_vqa()
    parts = []
    for split, questions, image_paths in (
        ("train", easy_vqa.get_train_questions, easy_vqa.get_train_image_paths),
        ("test", easy_vqa.get_test_questions, easy_vqa.get_test_image_paths),
    ):
        texts, answers, image_ids = questions()
        paths = image_paths()
        # Image ids restart at 0 in each split (train/images/0.png and test/images/0.png are
        # different pictures), so paths, not ids, identify an image. A question whose image file
        # is missing keeps a would-be path, so the manifest reports it instead of dropping it.
        image_dir = os.path.join(os.path.dirname(os.path.abspath(easy_vqa.__file__)), "data", split, "images")
        column = [os.path.abspath(paths.get(i) or os.path.join(image_dir, f"{i}.png")) for i in image_ids]
        parts.append(pd.DataFrame({"image": column, "question": texts, "answer": answers, "split": split}))
    return pd.concat(parts, ignore_index=True)


def easy_vqa_answers() -> list[str]:
    """The 13 easy-VQA answers, in the package's order (a stable class index)."""
    return list(_easy_vqa().get_answers())
