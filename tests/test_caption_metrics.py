"""Caption metrics: ours equal pycocoevalcap's on fixed inputs, and hand-checkable cases."""
import itertools
import math
import os
import random
import shutil

import pytest

from mmfuse.captioning import metrics
from mmfuse.captioning.metrics import bleu, caption_scores, cider_d, rouge_l, tokenize
from mmfuse.data.scene_captions import iter_scenes, phrasings

# Ours and pycocoevalcap's do the same float operations in the same order, except that CIDEr-D
# takes logs and exponentials with math where pycocoevalcap uses numpy (last-bit differences).
TOLERANCE = 1e-12

# Several images, 1-5 references each; candidates: a perfect match, no overlap at all, one word,
# longer and shorter than every reference, repeated words (clipping), a tie for the "closest"
# reference length (5 words vs references of 4 and 6: the shorter is taken).
MIXED = (
    {"perfect": ["a red circle to the left of a blue square"],
     "none": ["zebra umbrella quantum"],
     "one_word": ["circle"],
     "long": ["there are three shapes a red circle a blue square and a green triangle from left to right ok"],
     "repeat": ["red red red red circle circle"],
     7: ["a small yellow circle here"],
     8: ["two green triangles and a purple square"]},
    {"perfect": ["a red circle to the left of a blue square", "a blue square to the right of a red circle",
                 "two shapes a red circle and a blue square"],
     "none": ["a gray square"],
     "one_word": ["a red circle", "one red circle on a white background", "there is a red circle",
                  "a single red circle", "a picture of a red circle"],
     "long": ["three shapes a red circle a blue square and a green triangle",
              "from left to right a red circle a blue square and a green triangle"],
     "repeat": ["a red circle", "two red circles"],
     7: ["a yellow circle", "a big yellow circle on the left"],
     8: ["two green triangles to the left of a purple square",
         "a purple square to the right of two green triangles",
         "three shapes two green triangles and a purple square",
         "from left to right two green triangles and a purple square"]},
)
# Odd but legal: an empty candidate, and candidates that are all longer than their references.
EDGES = (
    {1: [""], 2: ["a red circle and a red circle and a red circle"], 3: ["x y z w v u"]},
    {1: ["a red circle"], 2: ["a red circle"], 3: ["x y", "z w v"]},
)


def _shape_scene_set():
    """Captions of our scene generator: references are 4 phrasings, the candidate a 5th (or a
    phrasing of the next scene: wrong on purpose)."""
    candidates, references = {}, {}
    scenes = list(itertools.islice(iter_scenes(0), 13))
    for index, scene in enumerate(scenes[:12]):
        options = [tokenize(c) for c in phrasings(scene)]
        random.Random(index).shuffle(options)
        references[scene.image] = options[:4]
        wrong = tokenize(phrasings(scenes[index + 1])[0])
        candidates[scene.image] = [wrong if index % 3 == 0 else options[4]]
    return candidates, references


def _theirs(candidates, references):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    bleus, bleu_images = Bleu(4).compute_score(references, candidates, verbose=0)
    rouge, rouge_images = Rouge().compute_score(references, candidates)
    cider, cider_images = Cider().compute_score(references, candidates)
    return bleus, bleu_images, rouge, rouge_images, cider, cider_images


@pytest.mark.parametrize("case", ["mixed", "edges", "shape_scenes"])
def test_equal_to_pycocoevalcap(case):
    pytest.importorskip("pycocoevalcap", reason="the comparison needs pycocoevalcap (pip install -e .[dev])")
    candidates, references = {"mixed": MIXED, "edges": EDGES}.get(case) or _shape_scene_set()
    bleus, bleu_images, rouge, rouge_images, cider, cider_images = _theirs(candidates, references)
    images = list(references)

    ours, ours_images = bleu(candidates, references)
    for k in range(4):
        assert ours[k] == pytest.approx(bleus[k], abs=TOLERANCE, rel=0), f"BLEU-{k + 1}"
        assert [ours_images[i][k] for i in images] == pytest.approx(bleu_images[k], abs=TOLERANCE, rel=0)
    ours, ours_images = rouge_l(candidates, references)
    assert ours == pytest.approx(rouge, abs=TOLERANCE, rel=0)
    assert [ours_images[i] for i in images] == pytest.approx(list(rouge_images), abs=TOLERANCE, rel=0)
    ours, ours_images = cider_d(candidates, references)
    assert ours == pytest.approx(cider, abs=TOLERANCE, rel=0)
    assert [ours_images[i] for i in images] == pytest.approx(list(cider_images), abs=TOLERANCE, rel=0)
    if case == "mixed":  # the inputs exercise what they are meant to
        assert ours_images["perfect"] > 5 and ours_images["none"] == 0 and 0 < rouge < 1


def test_hand_checkable_values():
    # A perfect match: every precision is 1 (up to pycocoevalcap's 1e-9 smoothing), no penalty.
    same = {"a": ["a red circle to the left of a blue square"], "b": ["two green triangles and a gray square"]}
    refs = {k: list(v) for k, v in same.items()}
    scores = caption_scores(same, refs, with_meteor=False)
    for name in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L"):
        assert scores.corpus[name] == pytest.approx(1.0, abs=1e-9), name
    # CIDEr-D: candidate == the only reference gives cosine 1 for every n, no length penalty, x10
    # (each caption has 4-grams the other image lacks, so no order's tf-idf vector is all zero).
    assert scores.corpus["CIDEr-D"] == pytest.approx(10.0, abs=1e-9)
    assert scores.skipped == {"METEOR": "not asked for"}

    # BLEU-1 of a 3-word candidate whose words are all in a 7-word reference: p1 = 1, brevity
    # penalty exp(1 - 7/3); ROUGE-L: LCS 3, P = 1, R = 3/7, F = (1 + 1.2^2) P R / (R + 1.2^2 P).
    cand, ref = {0: ["a red circle"]}, {0: ["a red circle and a blue square"]}
    assert bleu(cand, ref)[0][0] == pytest.approx(math.exp(1 - 7 / 3), abs=1e-9)
    p, r = 1.0, 3 / 7
    assert rouge_l(cand, ref)[0] == pytest.approx((1 + 1.44) * p * r / (r + 1.44 * p), abs=1e-12)
    # Bigrams: 2 of 2 correct, so BLEU-2 = sqrt(p1 p2) * BP = BP.
    assert bleu(cand, ref)[0][1] == pytest.approx(math.exp(1 - 7 / 3), abs=1e-9)
    # Clipping: "red" four times counts once against a reference that has it once (c = 4 >= r = 3).
    assert bleu({0: ["red red red red"]}, {0: ["a red one"]})[0][0] == pytest.approx(0.25, abs=1e-9)

    # Nothing in common: everything is 0 (BLEU up to the smoothing's ~1e-6).
    none = caption_scores({0: ["zebra"], 1: ["umbrella"]}, {0: ["a red circle"], 1: ["a blue square"]},
                          with_meteor=False)
    assert none.corpus["BLEU-1"] < 1e-5 and none.corpus["ROUGE-L"] == 0 and none.corpus["CIDEr-D"] == 0
    # CIDEr-D's idf is log(N / df): one image alone scores 0 whatever it says.
    assert cider_d({0: ["a red circle"]}, {0: ["a red circle"]})[0] == 0


def test_closest_reference_length_prefers_the_shorter_on_a_tie():
    # 5 words vs references of 4 and 6: r = 4 (c >= r, no penalty); with r = 6 there would be one.
    cand = {0: ["a b c d e"]}
    scores, _ = bleu(cand, {0: ["a b c d", "a b c d e f"]})
    assert scores[0] == pytest.approx(1.0, abs=1e-9)


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="same image ids"):
        bleu({0: ["a"]}, {1: ["a"]})
    with pytest.raises(ValueError, match="exactly one candidate"):
        rouge_l({0: ["a", "b"]}, {0: ["a"]})
    with pytest.raises(ValueError, match="exactly one candidate"):
        cider_d({0: "a"}, {0: ["a"]})
    with pytest.raises(ValueError, match="at least one reference"):
        bleu({0: ["a"]}, {0: []})


def test_meteor_is_left_out_without_java(monkeypatch):
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)
    scores = caption_scores({0: ["a red circle"]}, {0: ["a red circle"]})
    assert "METEOR" not in scores.corpus and "java" in scores.skipped["METEOR"].lower()


@pytest.mark.skipif(not os.environ.get("MMFUSE_TEST_METEOR"),
                    reason="starts pycocoevalcap's METEOR jar (a JVM loading a 60 MB paraphrase table, ~7 s): "
                           "set MMFUSE_TEST_METEOR=1")
def test_meteor_through_pycocoevalcap_when_java_is_there():
    pytest.importorskip("pycocoevalcap")
    if shutil.which("java") is None:
        pytest.skip("no java on PATH")
    scores = caption_scores({1: ["a red circle"], 2: ["a blue square"]},
                            {1: ["a red circle", "a red ball"], 2: ["two blue squares"]})
    assert scores.per_image["METEOR"][1] == pytest.approx(1.0) and 0 < scores.corpus["METEOR"] < 1


TOKENIZER_CASES = [
    "A red circle, to the left of a blue square.",
    "Two shapes: a green triangle and a yellow circle!",
    "There are three shapes -- from left to right: a red circle; a gray square...",
    "It's a well-known dog's bone, isn't it? They'll say \"yes\"; I'd say 'no'.",
    "The dogs' bones (all 3.5 of them) cost 1,000 - or so [maybe] {really}",
    "  Mixed   CASE   and extra   spaces  ",
    "end- -start left-to-right won't can't we're I'm you've",
]


def test_tokenizer_by_hand():
    assert tokenize(TOKENIZER_CASES[0]) == "a red circle to the left of a blue square"
    assert tokenize(TOKENIZER_CASES[3]) == "it 's a well-known dog 's bone is n't it they 'll say yes i 'd say no"
    assert tokenize("(a red circle)") == "-lrb- a red circle -rrb-"  # PTB's escapes survive in pycocoevalcap


def test_tokenizer_equals_pycocoevalcaps_ptb_tokenizer():
    pytest.importorskip("pycocoevalcap", reason="needs pycocoevalcap")
    if shutil.which("java") is None:
        pytest.skip("pycocoevalcap's PTB tokenizer is a Java program: no java on PATH")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    texts = TOKENIZER_CASES + [c for s in itertools.islice(iter_scenes(0), 10) for c in phrasings(s)]
    theirs = PTBTokenizer().tokenize({i: [{"caption": t}] for i, t in enumerate(texts)})
    assert [tokenize(t) for t in texts] == [theirs[i][0] for i in range(len(texts))]
