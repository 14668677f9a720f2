"""Captions of shape_scenes scenes: true to the written scenes, and factual accuracy that catches lies."""
import itertools
import random

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mmfuse.data import scenes
from mmfuse.data.scene_captions import (CaptionParseError, Scene, caption_table, check_caption, describe,
                                        factual_accuracy, iter_scenes, parse_caption, phrasings)


@pytest.fixture
def small(monkeypatch):
    monkeypatch.setattr(scenes, "SPLITS", {"train": 12, "test": 4})


def test_replayed_scenes_are_the_written_ones(tmp_path, small):
    questions = scenes.load_shape_scenes(tmp_path)
    folder = tmp_path / f"shape_scenes-{scenes.VERSION}-s0"
    replayed = list(iter_scenes(0))
    assert [s.image for s in replayed] == list(dict.fromkeys(p[len(str(folder)) + 1:] for p in questions["image"]))
    for scene in replayed:
        pixels = np.asarray(Image.open(folder / scene.image))
        for obj in scene.objects:  # the middle of each box is inside its shape, in its colour
            x0, y0, x1, y1 = obj.box
            assert tuple(pixels[(y0 + y1) // 2, (x0 + x1) // 2]) == scenes.COLORS[obj.color]
        asked = questions[questions["image"] == str(folder / scene.image)]
        for question, answer in zip(asked["question"], asked["answer"]):
            if question == "how many shapes are there?":
                assert answer == str(len(scene.objects))
            elif question == "what color is the leftmost shape?":
                assert answer == scene.left_to_right()[0].color
        assert set(asked["split"]) == {scene.split}


def test_every_caption_we_write_is_factual():
    sample = list(itertools.islice(iter_scenes(0), 300))
    captions = [(c, s) for s in sample for c in phrasings(s)]
    share, problems = factual_accuracy([c for c, _ in captions], [s for _, s in captions])
    assert share == 1.0, [(c, p) for (c, _), p in zip(captions, problems) if p][:5]
    rng = random.Random(0)
    for scene in sample:
        options = phrasings(scene)
        assert len(set(options)) == len(options) >= 6
        assert describe(scene, rng) in options
        n = len(scene.objects)
        for caption in options:  # every caption states the objects' colours, kinds and number
            statement = parse_caption(caption)
            assert sum(item.count for item in statement.items) == n
            assert all(item.color and item.shape for item in statement.items)
            if len({(o.color, o.shape) for o in scene.objects}) > 1:  # and an order wherever it matters
                assert statement.left_of, caption


RED_CIRCLE = {"color": "red", "shape": "circle", "box": (5, 30, 20, 45)}
BLUE_SQUARE = {"color": "blue", "shape": "square", "box": (30, 5, 50, 25)}
GREEN_TRIANGLE = {"color": "green", "shape": "triangle", "box": (44, 40, 60, 56)}
TWO = [RED_CIRCLE, BLUE_SQUARE]
THREE = [RED_CIRCLE, BLUE_SQUARE, GREEN_TRIANGLE]


@pytest.mark.parametrize("caption, scene, problem", [
    ("a red circle to the left of a blue square", TWO, None),
    ("The red circle is left of the blue square.", TWO, None),
    ("a red circle and a blue square", TWO, None),  # no order stated: nothing false
    ("a green circle to the left of a blue square", TWO, "colour"),
    ("a red circle to the left of a gray square", TWO, "colour"),
    ("a red triangle to the left of a blue square", TWO, "kind"),
    ("two red circles to the left of a blue square", TWO, "count"),
    ("three shapes: a red circle and a blue square", TWO, "count"),
    ("a blue square to the left of a red circle", TWO, "order"),
    ("from left to right: a blue square and a red circle", TWO, "order"),
    ("a red circle on the right and a blue square on the left", TWO, "order"),
    ("from left to right: a red circle, a green triangle and a blue square", THREE, "order"),
    ("a red circle", TWO, "missing"),
    ("two shapes: a red circle and a blue square", THREE, "count"),
    ("a red circle to the left of a blue square", THREE, "missing"),
    ("from left to right: a red circle, a blue square and a green triangle", TWO, "extra"),
    ("a red circle next to a blue square", TWO, "unparseable"),
    ("red circles", TWO, "unparseable"),
    ("", TWO, "unparseable"),
])
def test_wrong_captions_are_caught_with_the_right_problem(caption, scene, problem):
    problems = check_caption(caption, scene)
    if problem is None:
        assert problems == []
    else:
        assert problems and problems[0].split(":")[0] == problem, problems


def test_lies_about_generated_scenes_are_caught():
    """Change one thing in a true caption of each of 200 scenes: the caption stops being factual."""
    rng = random.Random(3)
    other = {c: next(d for d in scenes.COLORS if d != c) for c in scenes.COLORS}
    for scene in itertools.islice(iter_scenes(1), 200):
        caption = describe(scene, rng)
        obj = scene.objects[0]
        recoloured = caption.replace(f"{obj.color} {obj.shape}", f"{other[obj.color]} {obj.shape}", 1)
        assert check_caption(recoloured, scene), (caption, recoloured)
        fewer = Scene(scene.image, scene.split, scene.objects[1:])  # the caption names one too many
        assert fewer.objects == () or check_caption(caption, fewer)


def test_ties_in_left_edge_allow_either_order():
    above = {"color": "red", "shape": "circle", "box": (10, 2, 24, 16)}
    below = {"color": "blue", "shape": "square", "box": (10, 30, 30, 50)}
    assert check_caption("a red circle to the left of a blue square", [above, below]) == []
    assert check_caption("a blue square to the left of a red circle", [above, below]) == []


def test_parse_errors_name_the_trouble():
    with pytest.raises(CaptionParseError, match="unknown word 'next'"):
        parse_caption("a red circle next to a blue square")
    with pytest.raises(CaptionParseError, match="needs a shape on each side"):
        parse_caption("a red circle to the left of")
    statement = parse_caption("there are two shapes: two red circles")
    assert statement.total == 2 and statement.items[0].count == 2


def test_caption_table_is_written_once_with_the_scenes_split(tmp_path, small):
    table = caption_table(root=tmp_path, captions_per_image=5)
    folder = tmp_path / f"shape_scenes-{scenes.VERSION}-s0"
    questions = pd.read_csv(folder / "questions.csv")
    assert list(table.columns) == ["image", "caption", "split"]
    assert table.groupby("image").size().eq(5).all()
    assert table.groupby("image")["caption"].nunique().eq(5).all()
    split_of = dict(zip(str(folder) + "/" + questions["image"], questions["split"]))
    assert dict(zip(table["image"], table["split"])) == split_of
    by_image = {str(folder / s.image): s for s in iter_scenes(0)}
    share, _ = factual_accuracy(list(table["caption"]), [by_image[i] for i in table["image"]])
    assert share == 1.0
    # The same from a fresh folder (deterministic); read back, not rebuilt, once written.
    again = caption_table(root=tmp_path / "b", captions_per_image=5)
    assert list(again["caption"]) == list(table["caption"])
    written = next(folder.glob("captions-*.csv"))
    written.write_text(written.read_text().replace(table["caption"][0], "edited", 1))
    assert caption_table(root=tmp_path, captions_per_image=5)["caption"][0] == "edited"
