"""Metrics, modality contributions, and the evaluation report (report.md + plots)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .data.batching import TableDataset
from .metric_format import format_metric, json_safe
from .model import MultimodalModel
from .inference import predict_outputs


def without(dataset: TableDataset, modality: str) -> TableDataset:
    """The same rows with one modality removed from every row (masked, not zero-filled)."""
    columns = dict(dataset.columns)
    column = columns[modality]
    columns[modality] = replace(column, index=torch.full_like(column.index, -1))
    return TableDataset(columns, dataset.target, dataset.groups)


def compute_metrics(outputs: Tensor, target: Tensor, labels: list[str], head) -> tuple[dict, list, Tensor | None]:
    """The head's task's metrics on its outputs (metrics, per-label rows, confusion matrix or None)."""
    return head.task.metrics(head.scores(outputs), target, labels)


def evaluate_dataset(model: MultimodalModel, dataset: TableDataset, config, labels: list[str],
                     device: str = "cpu") -> dict[str, Any]:
    """Metrics on `dataset`, plus the headline metric with each modality masked out."""
    if dataset.target is None:
        raise ValueError("evaluation needs labels")
    outputs = predict_outputs(model, dataset, config, device)
    metrics, per_class, confusion = compute_metrics(outputs, dataset.target, labels, model.head)
    headline = model.head.task.headline
    contribution = {"all": metrics[headline]}
    if len(dataset.columns) > 1:
        for modality in dataset.columns:
            masked = predict_outputs(model, without(dataset, modality), config, device)
            contribution[f"without_{modality}"] = compute_metrics(masked, dataset.target, labels, model.head)[0][headline]
    return {"metrics": metrics, "per_class": per_class, "confusion": confusion,
            "modality_contribution": contribution, "rows": len(dataset), "headline": headline,
            "predicted": [answer for answer, _ in model.head.task.answers(model.head.scores(outputs), labels, 0)]}


def inputs_name(key: str, modalities: list[str]) -> str:
    """'all' -> 'both present'; with two modalities 'without_text' -> 'image only (text removed)'."""
    if key == "all":
        return "both present" if len(modalities) == 2 else "all present"
    removed = key.removeprefix("without_")
    if len(modalities) == 2:
        kept = next(m for m in modalities if m != removed)
        return f"{kept} only ({removed} removed)"
    return f"without {removed}"


def write_report(result: dict[str, Any], out_dir: str | Path, *, title: str, labels: list[str],
                 modality_dropout: dict[str, float] | None = None) -> Path:
    """report.md with the metric table, per-class table, modality contributions and plots."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", "", f"{result['rows']} rows.", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {format_metric(v)} |" for k, v in result["metrics"].items()]
    contribution = result["modality_contribution"]
    modalities = [k.removeprefix("without_") for k in contribution if k != "all"]
    trained = (", ".join(f"{m} {r:g}" for m, r in modality_dropout.items()) if modality_dropout else "none")
    lines += ["", "## Answering with a modality missing", "",
              f"The {result['headline']} with each modality masked out of every row (absent, not zero-filled). "
              f"Modality dropout in training: {trained}.", "",
              "| inputs | value |", "|---|---|"]
    lines += [f"| {inputs_name(k, modalities)} | {format_metric(v)} |" for k, v in contribution.items()]
    if result["per_class"]:
        lines += ["", "## Per class", "", *per_label_table(result["per_class"])]
    if result["confusion"] is not None:
        # The classes of the per-class table: the labels, and a row for unseen ones if there were any.
        plot_confusion(result["confusion"], [row["label"] for row in result["per_class"]], out / "confusion.png")
        lines += ["", "## Confusion matrix", "", "![confusion matrix](confusion.png)"]
    plot_contribution(result["modality_contribution"], result["headline"], out / "modality_contribution.png")
    lines += ["", "## Modality contribution plot", "", "![modality contribution](modality_contribution.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    (out / "metrics.json").write_text(json.dumps(
        json_safe({k: result[k] for k in ("metrics", "per_class", "modality_contribution", "rows")}), indent=2))
    return path


def per_label_table(rows: list[dict[str, Any]]) -> list[str]:
    """A markdown table of per-label rows ({"label": ..., metric: value, ...})."""
    keys = [k for k in rows[0] if k != "label"]
    lines = ["| label | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for row in rows:
        cells = [f"{row[k]:.4f}" if isinstance(row[k], float) else str(row[k]) for k in keys]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    return lines


def plot_confusion(confusion: Tensor, labels: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(4.0, 0.45 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(confusion.numpy(), cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), value in _cells(confusion):
        if value:
            ax.text(j, i, str(int(value)), ha="center", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cells(matrix: Tensor):
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            yield (i, j), matrix[i, j].item()


def plot_contribution(contribution: dict[str, float], headline: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    names = [k.replace("_", " ") for k in contribution]
    ax.bar(names, list(contribution.values()), color=["#4c72b0"] + ["#dd8452"] * (len(names) - 1))
    ax.set_ylabel(headline)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
