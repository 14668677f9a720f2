"""`mmfuse train` with `task: multitask`: read the table once, each task's labels from its column,
train one model (mmfuse.train.fit_model with the multi-task LightningModule), evaluate every task
on the test split (or validation), write a report with one section per task, save the model."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch

from ..config import ColumnsConfig, Config
from ..data.batching import TableDataset
from ..data.manifest import load_manifest, split_manifest
from ..dataset import build_dataset
from ..errors import MmfuseError
from ..encoders.cache import FeatureCache
from ..inference import predict_outputs
from ..metric_format import format_metric
from ..model import build_encoders
from ..tasks import create_task
from .model import MultiTaskModel, build_multitask_model
from .targets import TaskLabels, TaskTargets, read_task_labels
from .weighting import create_weighting

log = logging.getLogger(__name__)


# A label column no table has: the manifest then reads no label (require_label=False), and every
# task's column is parsed by that task alone (read_task_labels), whatever its order in the list.
NO_LABEL = "__mmfuse_no_label_column__"


def read_splits(config: Config, source: Any = None) -> dict[str, pd.DataFrame]:
    """The good rows (the inputs' checks: missing or unreadable files) of the configured source,
    split into train / val / test; or of `source`, whole (all in "test"). Labels are read per task
    afterwards."""
    whole = source is not None
    bound = config.data.columns.model_dump() | {"label": NO_LABEL} | ({"split": None} if whole else {})
    data = config.data.model_copy(update={"columns": ColumnsConfig(**bound), "labels": None})
    manifest = load_manifest(source if whole else config.data.source, data, task="classification",
                             modalities=config.modalities(), require_label=False, rebind=whole)
    if whole:
        return {"test": manifest.frame.reset_index(drop=True)}
    if manifest.bad_rows:
        log.warning("%s", manifest.summary())
        for bad in manifest.bad_rows[:20]:
            log.warning("  %s", bad)
    return split_manifest(manifest, data)


def task_dataset(frame: pd.DataFrame, model: MultiTaskModel, config: Config, labels: dict[str, list[str]],
                 task_labels: dict[str, TaskLabels] | None = None) -> TableDataset:
    """A split as tensors; its target, with `task_labels`, every task's (target, known)."""
    token_modalities = set().union(*(f.token_modalities() for f in model.fusions.values()))
    dataset = build_dataset(frame.drop(columns=["label"], errors="ignore"), dict(model.encoders),
                            task="classification", labels=[], data=config.data, cache=FeatureCache(config.cache_dir),
                            group_by_image=config.train.group_by_image,
                            pooled_only=set(model.encoders) - token_modalities,
                            prepared_memory_mb=config.train.prepared_memory_mb)
    if task_labels is not None:
        dataset.target = TaskTargets({name: (task_labels[name].encode(labels[name]), task_labels[name].known())
                                      for name in labels})
    return dataset


def evaluate_tasks(model: MultiTaskModel, dataset: TableDataset, config: Config,
                   labels: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """Per task: its metrics over the rows that have its label, and how many rows those are."""
    outputs = predict_outputs(model, dataset, config)
    result = {}
    for spec in config.multitask.tasks:
        task = create_task(spec.type)
        target, known = dataset.target.targets[spec.name]
        if not known.any():
            continue
        scores = model.heads[spec.name].scores(outputs[spec.name][known])
        metrics, per_label, _ = task.metrics(scores, target[known], labels[spec.name])
        result[spec.name] = {"type": spec.type, "rows": int(known.sum()), "headline": task.headline,
                             "metrics": metrics, "per_label": per_label}
    return result


def evaluate_saved(directory: str | Path, *, data: Any = None, split: str = "test",
                   echo: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """A saved multi-task model on a split of its configured source, or on the table `data`
    (whole): every task's metrics over its labelled rows; MODEL/report/report.md."""
    from ..atomic import write_atomic
    from .artifact import load_multitask

    model, config, labels = load_multitask(directory)
    frame = read_splits(config, data).get("test" if data is not None else split)
    if frame is None or len(frame) == 0:
        raise MmfuseError(f"split {split!r} has no rows; evaluate a table with --data TABLE")
    task_labels = read_task_labels(config.data.source if data is None else data, frame, config.multitask.tasks,
                                   config.data)
    results = evaluate_tasks(model, task_dataset(frame, model, config, labels, task_labels), config, labels)
    name = "the table" if data is not None else split
    write_atomic(Path(directory) / "report" / "report.md", report_markdown(results, config, f"{directory} on {name}", {}))
    report_lines(results, config, name, echo)
    return results


def report_lines(results: dict[str, dict[str, Any]], config: Config, split: str, echo: Callable[[str], None]) -> None:
    """One line per task: its headline metric, or that the split has no labelled row for it."""
    for t in config.multitask.tasks:
        result = results.get(t.name)
        if result is None:
            echo(f"{split} {t.name}: no labelled row (column {t.column!r} is empty there)")
            continue
        echo(f"{split} {t.name}: {result['headline']} {format_metric(result['metrics'][result['headline']])} "
             f"({result['rows']} rows)")


def report_markdown(results: dict[str, dict[str, Any]], config: Config, split: str, fit: dict[str, Any]) -> str:
    from ..evaluate import per_label_table

    spec = config.multitask
    trained = f", {fit['epochs']} epochs in {fit['train_seconds']:.1f} s" if fit else ""
    lines = [f"# Multi-task report ({split})", "",
             f"sharing **{spec.sharing}**, weighting **{spec.weighting}**, fusion {config.fusion.name}{trained}", ""]
    for name, result in results.items():
        lines += [f"## {name} ({result['type']}, {result['rows']} rows)", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {format_metric(v)} |" for k, v in result["metrics"].items()]
        if result["per_label"]:
            lines += ["", *per_label_table(result["per_label"])]
        lines.append("")
    return "\n".join(lines)


def train_multitask(config: Config, *, resume: str | Path | None = None,
                    echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Train, evaluate and save; returns {"fit": summary, "split": name, "tasks": per-task results}."""
    from ..atomic import write_atomic
    from ..train import fit_model
    from .artifact import save_multitask
    from .training import MultiTaskTraining

    spec = config.multitask
    parts = read_splits(config)
    if len(parts["train"]) == 0:
        raise MmfuseError("no good training rows left (see the bad rows reported above)")
    source = config.data.source
    part_labels = {name: read_task_labels(source, frame, spec.tasks, config.data)
                   for name, frame in parts.items() if len(frame)}
    labels = {}
    for t in spec.tasks:
        known = [v for v in part_labels["train"][t.name].values if v is not None]
        if not known:
            raise MmfuseError(f"task {t.name}: no training row has a label in column {t.column!r}")
        labels[t.name] = create_task(t.type).label_set(known) if create_task(t.type).per_label else []
    torch.manual_seed(config.train.seed)
    encoders = build_encoders(config)
    for modality, encoder in encoders.items():
        encoder.fit([v for v in parts["train"][modality].tolist() if isinstance(v, str)])
    model = build_multitask_model(config, labels, encoders)
    sets = {name: task_dataset(parts[name], model, config, labels, part_labels[name]) for name in part_labels}
    if resume is None:
        model.fit_scalers(sets["train"])
    for encoder in model.encoders.values():
        encoder.release()
    weighting = create_weighting(spec.weighting, {t.name: t.weight for t in spec.tasks}, spec.gradnorm_alpha)
    fit = fit_model(model, sets["train"], sets.get("val"), config, output_dir=config.output_dir, resume=resume,
                    make_module=lambda steps: MultiTaskTraining(model, config, steps, weighting),
                    lightning_clips=not weighting.needs_task_gradients)
    fit["task_weights"] = weighting.current()
    if fit.get("rank", 0) != 0:
        return {"fit": fit}
    model.eval()
    split = "test" if "test" in sets else "val"
    results = evaluate_tasks(model, sets[split], config, labels) if split in sets else {}
    out = Path(config.output_dir)
    write_atomic(out / "report.md", report_markdown(results, config, f"{split} split", fit))
    save_multitask(model, config, labels, out / "model", {"fit": fit, "split": split, "tasks": results})
    echo(f"trained {fit['epochs']} epochs in {fit['train_seconds']:.1f} s ({spec.sharing} sharing, {spec.weighting} weighting)")
    report_lines(results, config, split, echo)
    echo(f"report: {out / 'report.md'}; model: {out / 'model'}")
    return {"fit": fit, "split": split, "tasks": results}
