"""Captions of `shape_scenes` scenes, and the factual accuracy of generated captions.

Our scene generator (`data/scenes.py`) knows every object it drew, so it can both write true
captions and check a generated one. A caption here always states how many objects there are, the
colour and kind of each, and their left/right order when there is more than one; it comes in
several phrasings ("a red circle to the left of a blue square", "two shapes: a green triangle and
a yellow circle, from left to right", "from right to left: ...", "... on the left and ... on the
right"); objects of the same colour and kind next to each other are counted ("two red circles").

"Left of" compares the boxes' left edges, as scenes.py's "what color is the leftmost shape?"
does; objects can share a left edge (one above the other), and then either order is true.

`caption_table` writes the captions once, next to the shape_scenes images (same split).
`factual_accuracy` parses a caption with a small grammar over the words of these phrasings
(`parse_caption`) and checks every stated count, colour, kind and order against the scene. A
caption is factual when it parses, everything it states is true, and it mentions every object.
Text outside the grammar makes a caption not factual (problem "unparseable"): a model trained on
these captions should speak their language, and a checker that skipped unknown words could not
tell "a red circle" from "no red circle". Problems are named by their first word: unparseable,
count, colour, kind, extra (a stated object that is not there), missing (an object not
mentioned), order. Order is judged only once counts, colours and kinds are right (with a wrong
object there is no sure pairing of words to objects).
"""
from __future__ import annotations

import itertools
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import pandas as pd

from ..atomic import write_atomic
from ..captioning.metrics import tokenize
from . import scenes as scene_generator

__all__ = ["CAPTIONS_VERSION", "CaptionParseError", "Scene", "SceneObject", "Statement", "caption_table",
           "check_caption", "describe", "factual_accuracy", "iter_scenes", "parse_caption", "phrasings"]

CAPTIONS_VERSION = "v1"  # bump when the phrasings change: the written table is named by it
CAPTIONS_PER_IMAGE = 5
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


# ---------------------------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SceneObject:
    color: str
    shape: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 as drawn

    @property
    def left(self) -> int:
        return self.box[0]


@dataclass(frozen=True)
class Scene:
    image: str                       # as in questions.csv: "train/0.png"
    split: str
    objects: tuple[SceneObject, ...]

    def left_to_right(self) -> list[SceneObject]:
        return sorted(self.objects, key=lambda o: o.left)  # stable: a tie keeps the drawing order


def iter_scenes(seed: int = 0) -> Iterator[Scene]:
    """Every shape_scenes scene with its objects, replayed from scenes.py's own generator (the same
    random draws as the written images and questions)."""
    for name, objects, _image, _questions in scene_generator.scenes(seed):
        yield Scene(name, name.split("/")[0], _objects(objects))


def _objects(objects: Iterable[Mapping | SceneObject]) -> tuple[SceneObject, ...]:
    return tuple(o if isinstance(o, SceneObject) else SceneObject(o["color"], o["shape"], tuple(o["box"]))
                 for o in objects)


def _as_scene(scene: Scene | Sequence[Mapping]) -> Scene:
    """A Scene, or scenes.py's list of {"color", "shape", "box"} dicts."""
    return scene if isinstance(scene, Scene) else Scene("", "", _objects(scene))


# ---------------------------------------------------------------------------------------------
# Writing captions
# ---------------------------------------------------------------------------------------------

def _number(count: int) -> str:
    return NUMBER_WORDS[count] if count < len(NUMBER_WORDS) else str(count)


def _item(count: int, color: str | None, shape: str | None) -> str:
    """"a red circle", "two red circles" (None: a word the caption did not state)."""
    kind = shape or "shape"
    words = [color] if color else []
    return " ".join(["a" if count == 1 else _number(count), *words, kind if count == 1 else kind + "s"])


def _listing(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _runs(scene: Scene) -> list[tuple[int, str, str]]:
    """(count, colour, kind) from left to right, neighbours of the same colour and kind merged."""
    runs: list[tuple[int, str, str]] = []
    for obj in scene.left_to_right():
        if runs and runs[-1][1:] == (obj.color, obj.shape):
            runs[-1] = (runs[-1][0] + 1, obj.color, obj.shape)
        else:
            runs.append((1, obj.color, obj.shape))
    return runs


def phrasings(scene: Scene | Sequence[Mapping]) -> list[str]:
    """Every caption we write for a scene (distinct, all true, each stating the number of objects,
    their colours and kinds, and their left/right order when there is more than one)."""
    scene = _as_scene(scene)
    if not scene.objects:
        raise ValueError("a scene without objects has no caption")
    runs = _runs(scene)
    items = [_item(*run) for run in runs]
    n = len(scene.objects)
    total = f"{_number(n)} shape{'s' if n != 1 else ''}"
    there = "there is" if n == 1 else "there are"
    if len(runs) == 1:  # one object, or several alike: no order to state
        (only,) = items
        out = [only, f"{there} {only}", f"a picture of {only}", f"{total}: {only}", f"{there} {total}: {only}",
               f"a picture of {total}: {only}"]
        if n == 1:
            _, color, shape = runs[0]
            out += [f"one {color} {shape}", f"a single {color} {shape}"]
        return out
    listed, backwards = _listing(items), _listing(items[::-1])
    out = [f"{total}: {listed}, from left to right", f"{there} {total}: {listed} from left to right",
           f"from left to right: {listed}", f"from right to left: {backwards}",
           f"{listed}, from left to right", f"a picture of {listed}, from left to right"]
    if len(runs) == 2:
        left, right = items
        out += [f"{left} to the left of {right}", f"{right} to the right of {left}",
                f"{total}: {left} to the left of {right}",
                f"{left} on the left and {right} on the right", f"on the left {left} and on the right {right}"]
    elif len(runs) == 3:
        left, middle, right = items
        out += [f"{left} on the left, {middle} in the middle and {right} on the right",
                f"on the left {left}, in the middle {middle} and on the right {right}"]
    return out


def describe(scene: Scene | Sequence[Mapping], rng: random.Random) -> str:
    """One true caption of the scene, in a phrasing drawn with `rng`."""
    return rng.choice(phrasings(scene))


def build_caption_table(seed: int = 0, captions_per_image: int = CAPTIONS_PER_IMAGE) -> pd.DataFrame:
    """(image, caption, split): `captions_per_image` captions per scene, distinct phrasings while
    there are enough (every scene has at least 6), drawn with a generator seeded by the image."""
    rows = []
    for scene in iter_scenes(seed):
        rng = random.Random(f"{seed}/{scene.image}")
        options = phrasings(scene)
        chosen = rng.sample(options, min(captions_per_image, len(options)))
        chosen += rng.choices(options, k=captions_per_image - len(chosen))
        rows += [{"image": scene.image, "caption": caption, "split": scene.split} for caption in chosen]
    return pd.DataFrame(rows, columns=["image", "caption", "split"])


def caption_table(seed: int = 0, captions_per_image: int = CAPTIONS_PER_IMAGE,
                  root: Path | None = None) -> pd.DataFrame:
    """The shape_scenes caption set (image as an absolute path, caption, split: the scenes' own
    train/test split), written once beside the scenes' questions.csv and read back after that."""
    folder = scene_generator.scenes_folder(root, seed)
    path = folder / f"captions-{CAPTIONS_VERSION}-k{captions_per_image}.csv"
    if not path.is_file():
        scene_generator.load_shape_scenes(root, seed)  # the images, generated on first use
        frame = build_caption_table(seed, captions_per_image)
        write_atomic(path, frame.to_csv(index=False))  # whole or absent: no marker file needed
    frame = pd.read_csv(path, keep_default_na=False)
    frame["image"] = [str(folder / p) for p in frame["image"]]
    return frame


# ---------------------------------------------------------------------------------------------
# Reading captions: a small grammar
# ---------------------------------------------------------------------------------------------
#
#   caption  := (total | item | relation | order | position | "and" | filler)*
#   item     := [count ["single"]] [colour] kind       e.g. "a red circle", "two blue squares",
#                                                     "the green triangle", "a red shape"
#   total    := count ("shape" | "shapes" | "object" | "objects"), before any item: "three shapes"
#   relation := ["to the" | "on the"] ("left" | "right") "of"                   (between two items)
#   order    := ["from"] "left to right" | ["from"] "right to left"            (all items, as listed)
#   position := "on the left" | "in the middle" | "on the right" (and "at the ...", "in the center"),
#               tagging the item just before it when that item has none, else the item after it
#   filler   := "there is", "there are", "is", "are", "with", "a picture of", "an image of", ...
#
# "a"/"an"/"the"/"one" count 1; a singular kind without a count is one; a plural kind needs a count.

COUNT_WORDS = {"a": 1, "an": 1, "the": 1, **{word: n for n, word in enumerate(NUMBER_WORDS) if n}}
COLOR_WORDS = {**{c: c for c in scene_generator.COLORS}, "grey": "gray"}
KIND_WORDS = {**{s: (s, False) for s in scene_generator.SHAPES},
              **{s + "s": (s, True) for s in scene_generator.SHAPES},
              "shape": (None, False), "shapes": (None, True), "object": (None, False), "objects": (None, True)}
POSITIONS = {"left": 0, "middle": 1, "center": 1, "centre": 1, "right": 2}
PHRASES: dict[tuple[str, ...], tuple] = {
    **{(*to, "left", "of"): ("relation", "left") for to in ((), ("to", "the"), ("on", "the"))},
    **{(*to, "right", "of"): ("relation", "right") for to in ((), ("to", "the"), ("on", "the"))},
    **{(*start, "left", "to", "right"): ("order", "left") for start in ((), ("from",))},
    **{(*start, "right", "to", "left"): ("order", "right") for start in ((), ("from",))},
    **{(prep, "the", where): ("position", place)
       for where, place in POSITIONS.items() for prep in ("on", "at", "in")},
    ("and",): ("and",),
    **{words: ("filler",) for words in (("there", "is"), ("there", "are"), ("is",), ("are",), ("with",),
                                        ("a", "picture", "of"), ("an", "image", "of"), ("picture", "of"),
                                        ("image", "of"), ("the", "image", "shows"), ("this", "image", "shows"))},
}
_LONGEST_PHRASE = max(map(len, PHRASES))


class CaptionParseError(ValueError):
    """The caption says something outside the grammar."""


@dataclass(frozen=True)
class Item:
    count: int
    color: str | None   # None: not stated ("a shape")
    shape: str | None

    def __str__(self) -> str:
        return _item(self.count, self.color, self.shape)


@dataclass
class Statement:
    """What a caption states: the objects in the order named, the total (if said), and which
    items are said to be left of which (pairs of indices into `items`)."""
    items: list[Item] = field(default_factory=list)
    total: int | None = None
    left_of: set[tuple[int, int]] = field(default_factory=set)


def _read_item(tokens: list[str], i: int) -> tuple[Item | None, int, bool]:
    """(item, next position, whether the count was said) at tokens[i], or (None, i, False)."""
    j, count = i, None
    if j < len(tokens) and (tokens[j] in COUNT_WORDS or tokens[j].isdigit()):
        count = COUNT_WORDS.get(tokens[j]) or int(tokens[j])
        j += 1
        if count == 1 and j < len(tokens) and tokens[j] == "single":
            j += 1
    color = COLOR_WORDS.get(tokens[j]) if j < len(tokens) else None
    j += color is not None
    if j >= len(tokens) or tokens[j] not in KIND_WORDS:
        if count is not None or color is not None:
            raise CaptionParseError(f"{' '.join(tokens[i:j + 1])!r} names no kind of shape")
        return None, i, False
    shape, plural = KIND_WORDS[tokens[j]]
    if count is None and plural:
        raise CaptionParseError(f"{' '.join(tokens[i:j + 1])!r} says no number")
    said = count is not None
    count = 1 if count is None else count
    if plural != (count != 1):
        raise CaptionParseError(f"{' '.join(tokens[i:j + 1])!r}: number and noun disagree")
    return Item(count, color, shape), j + 1, said


def _symbols(tokens: list[str]) -> list[tuple]:
    """The caption as a list of ("item", Item), ("total", n), ("relation", side), ("order", side),
    ("position", 0|1|2), ("and",); fillers dropped."""
    symbols: list[tuple] = []
    i = 0
    while i < len(tokens):
        for length in range(_LONGEST_PHRASE, 0, -1):
            phrase = PHRASES.get(tuple(tokens[i:i + length]))
            if phrase is not None:
                if phrase[0] != "filler":
                    symbols.append(phrase)
                i += length
                break
        else:
            item, i_next, said = _read_item(tokens, i)
            if item is None:
                raise CaptionParseError(f"unknown word {tokens[i]!r}")
            no_item_yet = not any(s[0] == "item" for s in symbols)
            if said and item.color is None and item.shape is None and no_item_yet:
                symbols.append(("total", item.count))  # "three shapes" before the objects
            else:
                symbols.append(("item", item))
            i = i_next
    return symbols


def parse_caption(caption: str) -> Statement:
    """What a caption states (raises CaptionParseError for text outside the grammar)."""
    symbols = _symbols(tokenize(caption).split())
    statement = Statement()
    index_at: dict[int, int] = {}  # symbol position -> item index
    for at, symbol in enumerate(symbols):
        if symbol[0] == "item":
            index_at[at] = len(statement.items)
            statement.items.append(symbol[1])
    if not statement.items:
        raise CaptionParseError("names no shape" if symbols else "empty caption")
    totals = [s[1] for s in symbols if s[0] == "total"]
    if len(totals) > 1:
        raise CaptionParseError("says the number of shapes twice")
    statement.total = totals[0] if totals else None
    positions: dict[int, int] = {}  # item index -> 0 left, 1 middle, 2 right
    for at, symbol in enumerate(symbols):
        before, after = index_at.get(at - 1), index_at.get(at + 1)
        if symbol[0] == "relation":
            if before is None or after is None:
                raise CaptionParseError(f"'{symbol[1]} of' needs a shape on each side")
            statement.left_of.add((before, after) if symbol[1] == "left" else (after, before))
        elif symbol[0] == "order":
            for i, j in itertools.combinations(range(len(statement.items)), 2):
                statement.left_of.add((i, j) if symbol[1] == "left" else (j, i))
        elif symbol[0] == "position":
            target = before if before is not None and before not in positions else after
            if target is None or target in positions:
                raise CaptionParseError("a position ('on the left', ...) belongs to no shape")
            positions[target] = symbol[1]
    for i, j in itertools.permutations(positions, 2):
        if positions[i] < positions[j]:
            statement.left_of.add((i, j))
    return statement


# ---------------------------------------------------------------------------------------------
# Checking captions against scenes
# ---------------------------------------------------------------------------------------------

def _fits(item: Item, obj: SceneObject) -> bool:
    return item.color in (None, obj.color) and item.shape in (None, obj.shape)


def _there(count: int) -> str:
    return f"there {'is' if count == 1 else 'are'} {count}"


def _object_problems(statement: Statement, scene: Scene) -> list[str]:
    """count / colour / kind / extra / missing problems (an empty list: the objects are right)."""
    problems = []
    n = len(scene.objects)
    if statement.total is not None and statement.total != n:
        problems.append(f"count: says {_number(statement.total)} shape{'s' * (statement.total != 1)}, {_there(n)}")
    actual = Counter((o.color, o.shape) for o in scene.objects)
    stated = Counter()
    for item in statement.items:
        if item.color and item.shape:
            stated[item.color, item.shape] += item.count
    # 1. Fully stated objects that are there take their objects; saying more of them than there
    #    are is a count problem.
    remaining = list(scene.objects)
    for pair, count in stated.items():
        for _ in range(min(count, actual[pair])):
            remaining.remove(next(o for o in remaining if (o.color, o.shape) == pair))
        if actual[pair] and count > actual[pair]:
            problems.append(f"count: says {_item(count, *pair)}, {_there(actual[pair])}")
    # 2. The other stated objects (a colour or kind that is not there, or not said) are paired with
    #    what remains, the most specific first, to name what is wrong.
    others = [Item(1, item.color, item.shape) for item in statement.items for _ in range(item.count)
              if not (item.color and item.shape and actual[item.color, item.shape])]
    others.sort(key=lambda item: (item.color is None) + (item.shape is None))
    for item in others:
        same = next((o for o in remaining if _fits(item, o)), None)
        if same is None and item.color and item.shape:
            same = next((o for o in remaining if o.shape == item.shape), None)
            if same is not None:
                problems.append(f"colour: says {item}, it is a {same.color} {same.shape}")
            else:
                same = next((o for o in remaining if o.color == item.color), None)
                if same is not None:
                    problems.append(f"kind: says {item}, it is a {same.color} {same.shape}")
        if same is None:
            problems.append(f"extra: says {item}, there is none")
        else:
            remaining.remove(same)
    # 3. Objects nobody took: fewer than there are of a stated kind (count), or never named (missing).
    left_over = Counter((o.color, o.shape) for o in remaining)
    for pair in left_over:
        if stated[pair]:
            problems.append(f"count: says {_item(stated[pair], *pair)}, {_there(actual[pair])}")
        else:
            problems += [f"missing: the {pair[0]} {pair[1]} is not mentioned"] * left_over[pair]
    return problems


def _order_problems(statement: Statement, scene: Scene) -> list[str]:
    """Empty if some pairing of stated objects with the scene's respects every stated left-of."""
    slots = [i for i, item in enumerate(statement.items) for _ in range(item.count)]
    best: list[tuple[int, int]] | None = None
    for objects in itertools.permutations(scene.objects):
        if not all(_fits(statement.items[i], o) for i, o in zip(slots, objects)):
            continue
        lefts: dict[int, list[int]] = {}
        for i, o in zip(slots, objects):
            lefts.setdefault(i, []).append(o.left)
        # i left of j: every object of i has its left edge at or before every object of j's.
        broken = [(i, j) for i, j in sorted(statement.left_of)
                  if i in lefts and j in lefts and max(lefts[i]) > min(lefts[j])]
        if best is None or len(broken) < len(best):
            best = broken
    if not best:
        return []
    i, j = best[0]
    return [f"order: says {statement.items[i]} to the left of {statement.items[j]}, which is not so"]


def check_caption(caption: str, scene: Scene | Sequence[Mapping]) -> list[str]:
    """What is wrong with a caption of this scene; [] when it is factual."""
    scene = _as_scene(scene)
    try:
        statement = parse_caption(caption)
    except CaptionParseError as error:
        return [f"unparseable: {error}"]
    return _object_problems(statement, scene) or _order_problems(statement, scene)


def factual_accuracy(captions: Sequence[str],
                     scenes: Sequence[Scene | Sequence[Mapping]]) -> tuple[float, list[list[str]]]:
    """(share of captions with no problem, each caption's problems), caption i describing scene i."""
    if len(captions) != len(scenes):
        raise ValueError(f"{len(captions)} captions for {len(scenes)} scenes")
    problems = [check_caption(caption, scene) for caption, scene in zip(captions, scenes)]
    share = sum(not p for p in problems) / len(problems) if problems else float("nan")
    return share, problems
