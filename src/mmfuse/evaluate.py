"""Metrics, modality contributions, and the evaluation report (report.md + plots)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchmetrics.functional import classification as C
from torchmetrics.functional import regression as R

from .data.batching import TableDataset
from .dataset import UNSEEN
from .metric_format import format_metric, json_safe
from .model import MultimodalModel
from .inference import predict_outputs

HEADLINE = {"classification": "accuracy", "multilabel": "micro_f1", "regression": "rmse"}
UNSEEN_LABEL = "(not in training)"


def without(dataset: TableDataset, modality: str) -> TableDataset:
    """The same rows with one modality removed from every row (masked, not zero-filled)."""
    columns = dict(dataset.columns)
    column = columns[modality]
    columns[modality] = replace(column, index=torch.full_like(column.index, -1))
    return TableDataset(columns, dataset.target, dataset.groups)


def classification_metrics(scores: Tensor, target: Tensor, labels: list[str]) -> tuple[dict, list[dict], Tensor]:
    unseen = target == UNSEEN
    if unseen.any():
        # Rows whose label the model never saw in training: a class of their own that it never
        # predicts (score 0), so each one counts as an error, in the confusion matrix too.
        scores = torch.cat([scores, scores.new_zeros(len(scores), 1)], dim=1)
        target = torch.where(unseen, len(labels), target)
        labels = [*labels, UNSEEN_LABEL]
    n = len(labels)
    common = {"num_classes": n}
    metrics = {
        "accuracy": C.multiclass_accuracy(scores, target, average="micro", **common).item(),
        "macro_f1": C.multiclass_f1_score(scores, target, average="macro", **common).item(),
        "micro_f1": C.multiclass_f1_score(scores, target, average="micro", **common).item(),
        "macro_precision": C.multiclass_precision(scores, target, average="macro", **common).item(),
        "macro_recall": C.multiclass_recall(scores, target, average="macro", **common).item(),
    }
    support = torch.bincount(target, minlength=n)
    metrics["auroc"] = _classification_auroc(scores, target, support)
    precision = C.multiclass_precision(scores, target, average=None, **common)
    recall = C.multiclass_recall(scores, target, average=None, **common)
    f1 = C.multiclass_f1_score(scores, target, average=None, **common)
    per_class = [{"label": labels[i], "precision": precision[i].item(), "recall": recall[i].item(),
                  "f1": f1[i].item(), "support": int(support[i])} for i in range(n)]
    confusion = C.multiclass_confusion_matrix(scores, target, **common)
    return metrics, per_class, confusion


def _classification_auroc(scores: Tensor, target: Tensor, support: Tensor) -> float:
    """One-vs-rest AUROC, NaN (printed "undefined") when a class is absent from the split.

    A class without rows has no ROC curve; torchmetrics scores it 0 and averages that in, which
    printed 0.0000 (or 0.92 beside an accuracy of 1.0) for a split that lacks one class.
    """
    n = len(support)
    if bool((support == 0).any()):
        return float("nan")
    if n == 2:
        return C.binary_auroc(scores[:, 1], target).item()
    return C.multiclass_auroc(scores, target, num_classes=n, average="macro").item()


def multilabel_metrics(scores: Tensor, target: Tensor, labels: list[str]) -> tuple[dict, list[dict], None]:
    n, target = len(labels), target.long()
    metrics = {
        "micro_f1": C.multilabel_f1_score(scores, target, num_labels=n, average="micro").item(),
        "macro_f1": C.multilabel_f1_score(scores, target, num_labels=n, average="macro").item(),
        "macro_precision": C.multilabel_precision(scores, target, num_labels=n, average="macro").item(),
        "macro_recall": C.multilabel_recall(scores, target, num_labels=n, average="macro").item(),
        "exact_match": C.multilabel_exact_match(scores, target, num_labels=n).item(),
        "auroc": _multilabel_auroc(scores, target),
    }
    f1 = C.multilabel_f1_score(scores, target, num_labels=n, average=None)
    per_class = [{"label": labels[i], "f1": f1[i].item(), "support": int(target[:, i].sum())} for i in range(n)]
    return metrics, per_class, None


def _multilabel_auroc(scores: Tensor, target: Tensor) -> float:
    """Macro AUROC over the tags; undefined when a tag is on every row or on none."""
    positives = target.sum(0)
    if bool(((positives == 0) | (positives == len(target))).any()):
        return float("nan")
    return C.multilabel_auroc(scores, target, num_labels=target.shape[1], average="macro").item()


def regression_metrics(scores: Tensor, target: Tensor) -> tuple[dict, list, None]:
    return {"rmse": R.mean_squared_error(scores, target, squared=False).item(),
            "mae": R.mean_absolute_error(scores, target).item(),
            "r2": R.r2_score(scores, target).item() if len(target) > 1 else float("nan")}, [], None


def compute_metrics(task: str, outputs: Tensor, target: Tensor, labels: list[str], head) -> tuple[dict, list, Tensor | None]:
    scores = head.scores(outputs)
    if task == "classification":
        return classification_metrics(scores, target, labels)
    if task == "multilabel":
        return multilabel_metrics(scores, target, labels)
    return regression_metrics(scores, target)


def evaluate_dataset(model: MultimodalModel, dataset: TableDataset, config, labels: list[str],
                     device: str = "cpu") -> dict[str, Any]:
    """Metrics on `dataset`, plus the headline metric with each modality masked out."""
    if dataset.target is None:
        raise ValueError("evaluation needs labels")
    task = config.task
    outputs = predict_outputs(model, dataset, config, device)
    metrics, per_class, confusion = compute_metrics(task, outputs, dataset.target, labels, model.head)
    headline = HEADLINE[task]
    contribution = {"all": metrics[headline]}
    if len(dataset.columns) > 1:
        for modality in dataset.columns:
            masked = predict_outputs(model, without(dataset, modality), config, device)
            contribution[f"without_{modality}"] = compute_metrics(task, masked, dataset.target, labels, model.head)[0][headline]
    return {"metrics": metrics, "per_class": per_class, "confusion": confusion,
            "modality_contribution": contribution, "rows": len(dataset), "headline": headline,
            "predicted": outputs.argmax(-1).tolist() if task == "classification" else None}


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
        keys = [k for k in result["per_class"][0] if k != "label"]
        lines += ["", "## Per class", "", "| label | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for row in result["per_class"]:
            cells = [f"{row[k]:.4f}" if isinstance(row[k], float) else str(row[k]) for k in keys]
            lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
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
