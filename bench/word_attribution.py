"""Word attributions of `mmfuse explain` on easy-VQA: does the word that decides the answer receive
the largest attribution (in absolute value: a word can decide by pushing away from an answer)?

    .venv/bin/python bench/word_attribution.py runs/easy_vqa/model [--rows 300]

The deciding word of each question, by its template (every easy-VQA image holds one shape):
- yes/no questions ("is there a red shape?", "does the image contain a circle?"): the colour or
  shape the question names; in the negated ones ("is there not a red shape?", "is no circle
  present?") the negation decides as much (either word flips the answer), so the table gives the
  share both with and without it;
- "what color is the triangle?": "color" (the shape named is the only one in the image);
- "what shape is present?", "what is the red shape?": "shape".
Three methods, all on the predicted answer's log-odds (log p / (1 - p), which does not flatten out
when the model is sure): counterfactual edits (what `mmfuse explain` uses for a model trained with
its word substitutes: the largest drop over deleting the word or replacing it by a word the
training questions use in its place), Integrated Gradients on the text encoder's token embeddings
(the default for older models) and occlusion (log-odds with the word minus without it).
Rows: the first --rows official test questions.
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
from mmfuse.explain import integrated_gradients, row_scores, word_counterfactuals, word_occlusion

COLOURS = {"red", "green", "blue", "black", "gray", "yellow", "teal", "brown"}
SHAPES = {"circle", "rectangle", "triangle"}
METHODS = {"counterfactual": lambda *args: word_counterfactuals(*args)[0],
           "Integrated Gradients": integrated_gradients, "occlusion": word_occlusion}


def bare(word: str) -> str:
    return re.sub(r"[^a-z]", "", word.lower())


def deciding_words(question: str) -> tuple[str, str, set[str]]:
    """(question type, the bare word that decides its answer, the negation if any)."""
    words = [bare(w) for w in question.split()]
    if words[0] == "what":
        return ("what colour", "color", set()) if "color" in words else ("what shape", "shape", set())
    named = [w for w in words if w in COLOURS | SHAPES][0]
    negation = {w for w in words if w in {"not", "no"}}
    kind = f"yes/no{', negated' if negation else ''}, names a {'colour' if named in COLOURS else 'shape'}"
    return kind, named, negation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--rows", type=int, default=300)
    args = parser.parse_args()
    predictor = Predictor.load(args.model)
    table = load_builtin("easy_vqa")
    test = table[table["split"] == "test"].head(args.rows)
    kinds = ["yes/no, names a colour", "yes/no, names a shape", "yes/no, negated, names a colour",
             "yes/no, negated, names a shape", "what colour", "what shape"]
    # per method and question type: [rows whose top word is the deciding word, ... or the negation,
    # ... or any colour or shape word (a colour, a shape, "color", "shape"), rows]
    hits = {method: {kind: [0, 0, 0, 0] for kind in kinds} for method in METHODS}
    seconds = dict.fromkeys(METHODS, 0.0)
    for image, question in zip(test["image"], test["question"]):
        row = {"image": image, "text": question}
        target = int(row_scores(predictor, [row])[0].argmax())
        kind, decider, negation = deciding_words(question)
        for method, attribute in METHODS.items():
            start = time.perf_counter()
            words = attribute(predictor, row, "text", target)
            seconds[method] += time.perf_counter() - start
            top = bare(max(words, key=lambda wa: abs(wa[1]))[0])
            counts = hits[method][kind]
            counts[0] += top == decider
            counts[1] += top == decider or top in negation
            counts[2] += top in COLOURS | SHAPES | {"color", "shape"}
            counts[3] += 1
    n = len(test)
    print(f"\n## Word attributions on {n} easy-VQA test questions\n")
    print("Share of rows whose deciding word has the largest attribution (absolute value); then counting"
          " the negation of a negated question as deciding too; then the share whose top word is any colour"
          " or shape word (a colour, a shape, \"color\", \"shape\").\n")
    print("| question type | rows | " + " | ".join(METHODS) + " |")
    print("|---" * (len(METHODS) + 2) + "|")
    for kind in [*kinds, "all"]:
        counts = {m: [sum(c[i] for c in by.values()) for i in range(4)] if kind == "all" else by[kind]
                  for m, by in hits.items()}
        rows = next(iter(counts.values()))[3]
        cells = [" / ".join(f"{c[i] / max(rows, 1):.3f}" for i in range(3)) for c in counts.values()]
        print(f"| {kind} | {rows} | " + " | ".join(cells) + " |")
    print("| ms per row | | " + " | ".join(f"{seconds[m] / n * 1000:.0f}" for m in METHODS) + " |")
    print(f"\n({args.model})")


if __name__ == "__main__":
    main()
