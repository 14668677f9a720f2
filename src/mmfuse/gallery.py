"""The report's gallery: evaluated rows the model answers right and wrong, each explained
(mmfuse.explain): the heatmap over its image, its words with the largest attributions marked, and
the modalities' Shapley values."""
from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import pandas as pd

from .explain import explain_row, overlay
from .modalities import MODALITIES

VIEW_SIDE = 192  # px: the overlays' smallest longer side
MARKED_WORDS = 2  # per text: the words with the largest attributions, in bold with their value


def gallery_lines(predictor, frame: pd.DataFrame, predicted: list[str], out_dir: Path, per_kind: int) -> list[str]:
    """Markdown for report.md; the overlays are written under out_dir/gallery/."""
    right = [str(label) == guess for label, guess in zip(frame["label"], predicted)]
    correct = [i for i, ok in enumerate(right) if ok]
    wrong = [i for i, ok in enumerate(right) if not ok]
    modalities = list(predictor.model.modalities)
    lines = ["", "## Explained rows", "",
             "Heatmap: where the image regions pushed the prediction up (gradient x activation, red = most). "
             "Words: Integrated Gradients of the prediction's log-odds; the two largest in bold with their value "
             "(negative: against the prediction). Shapley: each input's share of the predicted class's probability.", ""]
    (out_dir / "gallery").mkdir(parents=True, exist_ok=True)
    for title, picked in (("Answered right", correct), ("Answered wrong", wrong)):
        lines += [f"### {title} ({len(picked)} rows)", ""]
        if not picked:
            continue
        header = [*modalities, "label", "predicted", "Shapley"]
        lines += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        for i in _spread(picked, per_kind):
            lines.append(_row_line(predictor, frame.iloc[i], modalities, out_dir))
        lines.append("")
    return lines


def _spread(indices: list[int], count: int) -> list[int]:
    """`count` indices spread evenly over the list (not only its first rows)."""
    step = max(len(indices) / count, 1)
    return [indices[int(k * step)] for k in range(min(count, len(indices)))]


def _row_line(predictor, record: pd.Series, modalities: list[str], out_dir: Path) -> str:
    row = {m: record[m] for m in modalities if _given(record.get(m))}
    explanation = explain_row(predictor, row)
    cells = []
    for m in modalities:
        if m not in row:
            cells.append("—")
        elif m in explanation.heatmaps:
            name = f"gallery/row{record['row']}_{m}.png"
            overlay(_viewable(MODALITIES[m].decode(row[m], predictor.config.data)),
                    explanation.heatmaps[m]).save(out_dir / name)
            cells.append(f"![row {record['row']}]({name})")
        elif m in explanation.words:
            cells.append(_marked(explanation.words[m]))
        else:
            cells.append(Path(str(row[m])).name)
    shapley = ", ".join(f"{m} {v:+.2f}" for m, v in explanation.shapley.items())
    cells += [str(record["label"]), f"{explanation.prediction} ({explanation.probability:.2f})", shapley]
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _viewable(image):
    """Small images (easy-VQA's are 64 px) blown up by a whole factor, pixels kept sharp."""
    factor = max(1, VIEW_SIDE // max(image.size))
    return image.resize((image.width * factor, image.height * factor), resample=0) if factor > 1 else image


def _marked(words: list[tuple[str, float]]) -> str:
    top = set(sorted(range(len(words)), key=lambda k: -abs(words[k][1]))[:MARKED_WORDS])
    shown = [html.escape(w).replace("*", "\\*").replace("_", "\\_") for w, _ in words]
    return " ".join(f"**{s}**<sup>{a:+.1f}</sup>" if k in top else s for k, (s, (_, a)) in enumerate(zip(shown, words)))


def _given(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and str(value).strip() != ""
