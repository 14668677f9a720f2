"""Scores of generated captions against an image set's references: BLEU-1..4, ROUGE-L, CIDEr-D
(mmfuse.captioning.metrics), and for shape_scenes images the factual accuracy against the scenes."""
from __future__ import annotations

from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from ..data import scenes as scene_generator
from ..data.scene_captions import Scene, factual_accuracy, iter_scenes
from .metrics import caption_scores, tokenize


@lru_cache(maxsize=2)
def shape_scenes_by_path(seed: int = 0) -> dict[str, Scene]:
    """Every shape_scenes scene keyed by its image's absolute path (as caption tables hold it)."""
    folder = scene_generator.scenes_folder(seed=seed)
    return {str(folder / scene.image): scene for scene in iter_scenes(seed)}


def scenes_of(images: Sequence[str]) -> list[Scene] | None:
    """The scenes of these images when every one is a shape_scenes image, else None."""
    folder = str(scene_generator.scenes_folder(seed=0))
    if not images or not all(str(image).startswith(folder) for image in images):
        return None  # not shape_scenes: no need to replay the generator
    known = shape_scenes_by_path()
    scenes = [known.get(str(Path(image))) for image in images]
    return None if any(scene is None for scene in scenes) else scenes


def score_captions(candidates: Sequence[str], references: Sequence[Sequence[str]],
                   images: Sequence[str] | None = None) -> dict:
    """Corpus scores of one candidate per image; factual accuracy (+ problem counts by kind)
    when the images are shape_scenes scenes."""
    ids = range(len(candidates))
    scores = caption_scores({i: [tokenize(candidates[i])] for i in ids},
                            {i: [tokenize(r) for r in references[i]] for i in ids}, with_meteor=False)
    result = dict(scores.corpus)
    scenes = scenes_of(images) if images is not None else None
    if scenes is not None:
        share, problems = factual_accuracy(list(candidates), scenes)
        result["factual"] = share
        result["problems"] = dict(Counter(p.split(":", 1)[0] for caption in problems for p in caption))
    return result
