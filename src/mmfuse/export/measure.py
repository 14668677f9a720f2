"""Accuracy against speed of a model variant on a labelled split, and the export report.

Rows/s time the networks only (towers + fusion + head) over inputs already decoded and resized,
which every variant shares; PyTorch and onnxruntime use the same number of threads.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..evaluate import compute_metrics, predict_outputs

REPORT_JSON, REPORT_MD = "export.json", "export.md"


def timed(run: Callable[[], Tensor]) -> tuple[Tensor, float]:
    start = time.perf_counter()
    outputs = run()
    return outputs, time.perf_counter() - start


def pytorch_outputs(predictor, dataset) -> Callable[[], Tensor]:
    return lambda: predict_outputs(predictor.model, dataset, predictor.config, "cpu")


def variant_line(variant: str, predictor, dataset, outputs: Tensor, seconds: float, *, size_bytes: int,
                 sparsity: float, reference: Tensor | None = None) -> dict[str, Any]:
    """One report line. `reference`: the scores of the PyTorch weights this variant was made from."""
    head = predictor.model.head
    headline = head.task.headline
    metrics = compute_metrics(outputs, dataset.target, predictor.labels, head)[0]
    scores = head.scores(outputs)
    diff = None if reference is None else float((scores - reference).abs().max())
    return {"variant": variant, "metric": headline, "value": metrics[headline], "rows": len(dataset),
            "rows_per_s": len(dataset) / max(seconds, 1e-9), "size_mb": size_bytes / 2**20,
            "sparsity": sparsity, "max_abs_diff": diff, "threads": torch.get_num_threads()}


def format_table(lines: list[dict[str, Any]]) -> str:
    metric = lines[0]["metric"] if lines else "metric"
    out = [f"| variant | {metric} | rows/s | size (MB) | sparsity | max abs score diff vs its PyTorch weights |",
           "|---|---|---|---|---|---|"]
    for line in lines:
        diff = "—" if line["max_abs_diff"] is None else f"{line['max_abs_diff']:.2e}"
        out.append(f"| {line['variant']} | {line['value']:.4f} | {line['rows_per_s']:,.0f} | "
                   f"{line['size_mb']:.2f} | {line['sparsity']:.3f} | {diff} |")
    return "\n".join(out)


def write_report(report_dir: Path, lines: list[dict[str, Any]]) -> Path:
    """Merge `lines` (by variant) into report/export.json and rewrite report/export.md from it."""
    report_dir.mkdir(parents=True, exist_ok=True)
    path = report_dir / REPORT_JSON
    known = {}
    if path.is_file():
        known = {line["variant"]: line for line in json.loads(path.read_text()).get("variants", [])}
    known |= {line["variant"]: line for line in lines}
    ordered = list(known.values())
    path.write_text(json.dumps({"variants": ordered}, indent=1))
    rows = ordered[0]["rows"] if ordered else 0
    (report_dir / REPORT_MD).write_text(
        f"# Export: accuracy against speed\n\nTest split, {rows} rows, CPU; rows/s time the networks "
        "on decoded inputs. PyTorch size counts model.safetensors only (frozen encoders are rebuilt "
        "from their package); ONNX size counts every graph.\n\n" + format_table(ordered) + "\n")
    return report_dir / REPORT_MD
