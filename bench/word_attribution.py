"""Word attributions of `mmfuse explain` on easy-VQA: in test questions that name a colour or a shape
("is there a red shape?", "does this image contain a circle?"), does that word receive the largest
attribution (occlusion: the predicted answer's probability with the word minus without it)?

    .venv/bin/python bench/word_attribution.py runs/easy_vqa/model [--rows 300]

Rows: the first --rows official test questions holding exactly one colour or shape word.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

# bench/easy_vqa.py would shadow the `easy_vqa` package the built-in data set is read from.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from mmfuse import Predictor
from mmfuse.data.datasets import load_builtin
from mmfuse.explain import row_scores, word_occlusion

COLOURS = {"red", "green", "blue", "black", "gray", "yellow", "teal", "brown"}
SHAPES = {"circle", "rectangle", "triangle"}


def bare(word: str) -> str:
    return re.sub(r"[^a-z]", "", word.lower())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--rows", type=int, default=300)
    args = parser.parse_args()
    predictor = Predictor.load(args.model)
    table = load_builtin("easy_vqa")
    test = table[table["split"] == "test"]
    picked = []
    for image, question in zip(test["image"], test["question"]):
        named = [w for w in question.split() if bare(w) in COLOURS | SHAPES]
        if len(named) == 1:
            picked.append(({"image": image, "text": question}, named[0]))
        if len(picked) == args.rows:
            break
    top_is_named, by_kind = 0, {"colour": [0, 0], "shape": [0, 0]}
    start = time.perf_counter()
    for row, named in picked:
        target = int(row_scores(predictor, [row])[0].argmax())
        words = word_occlusion(predictor, row, "text", target)
        best = max(words, key=lambda wa: wa[1])[0]
        hit = best == named
        top_is_named += hit
        kind = by_kind["colour" if bare(named) in COLOURS else "shape"]
        kind[0] += hit
        kind[1] += 1
    seconds = time.perf_counter() - start
    n = len(picked)
    print(f"\n## Word attributions (occlusion) on {n} easy-VQA test questions naming one colour or shape\n")
    print("| question names | rows | the named word has the largest attribution |")
    print("|---|---|---|")
    for kind, (hits, count) in by_kind.items():
        print(f"| a {kind} | {count} | {hits / max(count, 1):.3f} |")
    print(f"| either | {n} | {top_is_named / n:.3f} |")
    print(f"\n{seconds / n * 1000:.0f} ms per row ({args.model})")


if __name__ == "__main__":
    main()
