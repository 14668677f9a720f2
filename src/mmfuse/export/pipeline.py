"""`mmfuse export`: model dir -> [prune + fine-tune] -> ONNX graphs -> [int8] -> a loadable model dir,
with an accuracy-vs-speed line per variant in MODEL_DIR/report/export.{md,json}.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import MmfuseError
from .measure import pytorch_outputs, timed, variant_line, write_report
from .onnx_export import export_graphs, write_manifest
from .prune import prune_and_finetune, sparsity
from .quantize import quantize_int8
from .runner import ONNX_DIR, OnnxRunner, is_exported

log = logging.getLogger(__name__)
QUANTIZE = ("int8",)


def variant_name(quantize: str | None, prune: float | None) -> str:
    name = f"onnx {quantize or 'fp32'}"
    return name + (f", pruned {prune:g} + fine-tune" if prune else "")


def default_out(model_dir: Path, quantize: str | None, prune: float | None) -> Path:
    suffix = "onnx" + (f"_{quantize}" if quantize else "") + (f"_pruned{prune:g}" if prune else "")
    return model_dir.parent / f"{model_dir.name}_{suffix}"


def graph_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.onnx"))


def write_graphs(model, folder: Path, quantize: str | None) -> dict[str, Any]:
    """Export into `folder`; with int8, export to a scratch folder and quantize into `folder`."""
    if quantize is None:
        return export_graphs(model, folder)
    with tempfile.TemporaryDirectory(prefix="mmfuse-export-") as scratch:
        manifest = export_graphs(model, Path(scratch))
        folder.mkdir(parents=True, exist_ok=True)
        for graph in sorted(Path(scratch).glob("*.onnx")):
            quantize_int8(graph, folder / graph.name)
    manifest["quantized"] = quantize
    return manifest


def check_request(model_dir: Path, out: Path, fmt: str, quantize: str | None, prune: float | None) -> None:
    """Refuse a bad request before any work (loading a model, reading the data)."""
    if fmt != "onnx":
        raise MmfuseError(f"--format {fmt!r}: only 'onnx' is supported")
    if quantize is not None and quantize not in QUANTIZE:
        raise MmfuseError(f"--quantize {quantize!r}: allowed: {', '.join(QUANTIZE)}")
    if prune is not None and not 0.0 < prune < 1.0:
        raise MmfuseError(f"--prune {prune}: the sparsity must be between 0 and 1 (e.g. 0.5)")
    if is_exported(model_dir):
        raise MmfuseError(f"{model_dir} is already an exported model: export from the PyTorch model directory")
    if out.resolve() == model_dir.resolve():
        raise MmfuseError("--out must differ from the model directory (the export is a new model directory)")


def export_model(model_dir: str | Path, out: str | Path | None = None, *, fmt: str = "onnx",
                 quantize: str | None = None, prune: float | None = None, finetune_epochs: int = 2,
                 evaluate: bool = True, threads: int | None = None) -> dict[str, Any]:
    """Export `model_dir`; returns {"out", "manifest", "lines"} (lines: the report lines written)."""
    from ..predictor import Predictor

    model_dir = Path(model_dir)
    out = Path(out) if out is not None else default_out(model_dir, quantize, prune)
    check_request(model_dir, out, fmt, quantize, prune)
    if threads:
        torch.set_num_threads(threads)  # PyTorch and onnxruntime timed with the same threads
    predictor = Predictor.load(model_dir)
    splits = predictor.splits() if (prune or evaluate) else {}
    test = splits.get("test")
    test_set = predictor._dataset(test, cache=False) if evaluate and test is not None and len(test) else None
    if evaluate and test_set is None:
        log.warning("no test split configured: the export is not measured")
    lines, reference = [], None
    if test_set is not None:
        outputs, seconds = timed(pytorch_outputs(predictor, test_set))
        reference = predictor.model.head.scores(outputs)
        lines.append(variant_line("pytorch fp32", predictor, test_set, outputs, seconds,
                                  size_bytes=(model_dir / "model.safetensors").stat().st_size,
                                  sparsity=sparsity(predictor.model)))
    pruning = None
    if prune:
        pruning = prune_and_finetune(predictor, prune, splits["train"], epochs=finetune_epochs)
        log.info("pruned to sparsity %.3f (fine-tune %.1f s)", pruning["sparsity"], pruning["seconds"])
        if test_set is not None:  # the PyTorch weights the graphs now come from
            reference = predictor.model.head.scores(pytorch_outputs(predictor, test_set)())
    if out.exists():
        shutil.rmtree(out / ONNX_DIR, ignore_errors=True)
    predictor.save(out)  # config, labels, encoders, metrics, card, and the (pruned) PyTorch weights
    manifest = write_graphs(predictor.model, out / ONNX_DIR, quantize)
    manifest["pruning"] = pruning
    write_manifest(out / ONNX_DIR, manifest)
    if test_set is not None:
        runner = OnnxRunner(out, threads)
        outputs, seconds = timed(lambda: runner.outputs(test_set))
        lines.append(variant_line(variant_name(quantize, prune), predictor, test_set, outputs, seconds,
                                  size_bytes=graph_bytes(out / ONNX_DIR), sparsity=sparsity(predictor.model),
                                  reference=reference))
        write_report(model_dir / "report", lines)
    return {"out": out, "manifest": manifest, "lines": lines}
