"""shape_scenes: the second built-in VQA set, from our own generator."""
import random

import numpy as np
import pandas as pd
from PIL import Image

from mmfuse.data import scenes
from mmfuse.data.scenes import COLORS, ask, load_shape_scenes, place_objects


def small(monkeypatch):
    monkeypatch.setattr(scenes, "SPLITS", {"train": 12, "test": 4})


def test_generation_is_deterministic_and_complete(tmp_path, monkeypatch):
    small(monkeypatch)
    first = load_shape_scenes(tmp_path / "a")
    second = load_shape_scenes(tmp_path / "b")
    assert first.drop(columns="image").equals(second.drop(columns="image"))
    assert sorted(first["split"].unique()) == ["test", "train"]
    assert first.groupby("image").size().max() <= scenes.QUESTIONS_PER_IMAGE
    for a, b in zip(first["image"][:5], second["image"][:5]):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    # Read back, not regenerated, once complete.
    (tmp_path / "a" / f"shape_scenes-{scenes.VERSION}-s0" / "questions.csv").touch()
    assert load_shape_scenes(tmp_path / "a").equals(first)


def test_answers_match_the_scene():
    rng = random.Random(5)
    for _ in range(200):
        objects = place_objects(rng)
        shapes = [o["shape"] for o in objects]
        colors = [o["color"] for o in objects]
        for question, answer in ask(objects, rng):
            words = question.rstrip("?").split()
            if question == "how many shapes are there?":
                assert answer == str(len(objects))
            elif question.startswith("how many") and words[2] in COLORS:
                assert answer == str(colors.count(words[2]))
            elif question.startswith("how many"):
                assert answer == str(shapes.count(words[2][:-1]))
            elif question.startswith("is there"):
                assert answer == ("yes" if (words[3], words[4]) in zip(colors, shapes) else "no")
            elif question.startswith("what color is the leftmost"):
                assert answer == min(objects, key=lambda o: o["box"][0])["color"]
            elif question.startswith("what color"):
                assert shapes.count(words[4]) == 1 and answer == colors[shapes.index(words[4])]
            else:
                assert colors.count(words[4]) == 1 and answer == shapes[colors.index(words[4])]


def test_objects_do_not_overlap_and_are_drawn():
    rng = random.Random(1)
    for _ in range(100):
        objects = place_objects(rng)
        assert 1 <= len(objects) <= 3
        boxes = [o["box"] for o in objects]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1]
        image = np.asarray(scenes.draw_scene(objects, rng)).astype(int)
        for obj in objects:  # the box's centre has the object's colour
            x0, y0, x1, y1 = obj["box"]
            centre = image[(y0 + y1) // 2 + 2, (x0 + x1) // 2]
            assert np.abs(centre - np.array(COLORS[obj["color"]])).max() < 5


def test_it_is_a_builtin_with_its_columns(tmp_path, monkeypatch):
    from mmfuse.data import datasets

    small(monkeypatch)
    monkeypatch.setenv("MMFUSE_DATA", str(tmp_path))
    datasets._load.cache_clear()
    try:
        table = datasets.load_builtin("shape_scenes")
    finally:
        datasets._load.cache_clear()
    assert isinstance(table, pd.DataFrame) and str(tmp_path) in table["image"][0]
    assert datasets.builtin_columns("shape_scenes") == {"image": "image", "text": "question",
                                                         "label": "answer", "split": "split"}
