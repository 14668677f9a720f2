"""Export variants of a trained model, accuracy against speed, on its test split (CPU).

    flock /tmp/mmfuse-heavy.lock .venv/bin/python bench/export.py --model /tmp/export_model_run/model \
        [--prune 0.5] [--repeats 2] [--out docs/export_bench.md]

Rows: PyTorch fp32, ONNX fp32, ONNX int8, pruned (+ fine-tune) in PyTorch and ONNX fp32 / int8.
Three speeds per variant, all with the same threads and the test inputs already decoded:
  end to end  the product paths (Predictor's PyTorch loop over batches of images, the onnxruntime
              runner over the unique inputs), rows/s;
  image tower the image encoder alone over the unique test images, images/s;
  fusion+head over fixed features, rows/s (the "head over cached features" case).
Each time is the best of --repeats runs.
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

# Running this file puts bench/ first on sys.path, where bench/easy_vqa.py would shadow the
# `easy_vqa` data package: drop it.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch

from mmfuse import Predictor
from mmfuse.evaluate import predict_outputs
from mmfuse.export import export_model
from mmfuse.export.measure import variant_line
from mmfuse.export.pipeline import graph_bytes
from mmfuse.export.prune import freeze_features, sparsity

CHUNK = 256


def best_time(run, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return result, best


def image_rates(predictor, runner, dataset, repeats):
    """Images/s of the image tower: PyTorch encoder and ONNX graph over the same chunks."""
    pixels = dataset.columns["image"].prepared["pixels"]
    encoder = predictor.model.encoders["image"].eval()

    @torch.no_grad()
    def torch_tower():
        for first in range(0, len(pixels), CHUNK):
            encoder({"pixels": pixels[first : first + CHUNK]})

    def onnx_tower():
        for first in range(0, len(pixels), CHUNK):
            runner.towers["image"].run(None, {"pixels": pixels[first : first + CHUNK].numpy()})

    return (len(pixels) / best_time(torch_tower, repeats)[1],
            None if runner is None else len(pixels) / best_time(onnx_tower, repeats)[1])


def fusion_rates(predictor, runner, features_set, repeats):
    """Rows/s of fusion + head over fixed features (every column already holds features)."""
    model = predictor.model.eval()
    pytorch = len(features_set) / best_time(lambda: predict_outputs(model, features_set, predictor.config), repeats)[1]
    onnx = None
    if runner is not None:
        onnx = len(features_set) / best_time(lambda: runner.outputs(features_set), repeats)[1]
    return pytorch, onnx


def measure(name, predictor, runner, dataset, features_set, reference, size, repeats):
    if runner is None:
        outputs, seconds = best_time(lambda: predict_outputs(predictor.model, dataset, predictor.config), repeats)
    else:
        outputs, seconds = best_time(lambda: runner.outputs(dataset), repeats)
    line = variant_line(name, predictor, dataset, outputs, seconds, size_bytes=size,
                        sparsity=sparsity(predictor.model), reference=reference)
    images = image_rates(predictor, runner, dataset, repeats)
    fusion = fusion_rates(predictor, runner, features_set, repeats)
    line["image_per_s"] = images[0] if runner is None else images[1]
    line["fusion_rows_per_s"] = fusion[0] if runner is None else fusion[1]
    print(f"{name:<40} {line['metric']} {line['value']:.4f}  {line['rows_per_s']:8.0f} rows/s  "
          f"diff {line['max_abs_diff']}", flush=True)
    return line, outputs


def table(lines) -> str:
    out = [("| variant | accuracy | end to end rows/s | image tower images/s | fusion+head rows/s | "
            "graphs / weights (MB): image + text + fusion | sparsity | max abs score diff vs its PyTorch weights |"),
           "|---|---|---|---|---|---|---|---|"]
    for line in lines:
        diff = "—" if line["max_abs_diff"] is None else f"{line['max_abs_diff']:.1e}"
        out.append(f"| {line['variant']} | {line['value']:.4f} | {line['rows_per_s']:,.0f} | "
                   f"{line['image_per_s']:,.0f} | {line['fusion_rows_per_s']:,.0f} | {line['sizes']} | "
                   f"{line['sparsity']:.3f} | {diff} |")
    return "\n".join(out)


def graph_sizes(folder: Path) -> str:
    parts = [(folder / f"{name}.onnx").stat().st_size / 2**20 for name in ("image", "text", "fusion")]
    return " + ".join(f"{p:.2f}" for p in parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=Path("/tmp/export_model_run/model"))
    parser.add_argument("--prune", type=float, default=0.5)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    source = Predictor.load(args.model)
    test = source.splits()["test"]
    dataset = source._dataset(test, cache=False)  # every variant runs its own towers
    features_set = source._dataset(test, cache=False)
    freeze_features(features_set, source.model)  # fusion+head speed over fixed features
    reference = source.model.head.scores(predict_outputs(source.model, dataset, source.config))
    lines = []
    line, _ = measure("pytorch fp32", source, None, dataset, features_set, None,
                      (args.model / "model.safetensors").stat().st_size, args.repeats)
    lines.append(line | {"sizes": f"{(args.model / 'model.safetensors').stat().st_size / 2**20:.2f} (trainable weights only)"})
    with tempfile.TemporaryDirectory(prefix="mmfuse-bench-export-") as scratch:
        variants = [("onnx fp32", None, None), ("onnx int8", "int8", None),
                    (f"onnx fp32, pruned {args.prune:g} + fine-tune", None, args.prune),
                    (f"onnx int8, pruned {args.prune:g} + fine-tune", "int8", args.prune)]
        for name, quantize, prune in variants:
            out = Path(scratch) / name.replace(" ", "_").replace(",", "").replace("+", "")
            start = time.perf_counter()
            export_model(args.model, out, quantize=quantize, prune=prune, finetune_epochs=args.finetune_epochs,
                         evaluate=False)
            print(f"exported {name} in {time.perf_counter() - start:.1f} s", flush=True)
            exported = Predictor.load(out)
            ref = reference
            if prune:  # the pruned PyTorch weights are the reference of the pruned graphs
                ref = exported.model.head.scores(predict_outputs(exported.model, dataset, exported.config))
                if quantize is None:
                    line, _ = measure(f"pytorch fp32, pruned {prune:g} + fine-tune", exported, None, dataset,
                                      features_set, None, (out / "model.safetensors").stat().st_size, args.repeats)
                    lines.append(line | {"sizes": "—"})
            line, _ = measure(name, exported, exported.runner, dataset, features_set, ref,
                              graph_bytes(out / "onnx"), args.repeats)
            lines.append(line | {"sizes": graph_sizes(out / "onnx")})
    header = (f"Model `{args.model}` ({source.config.encoders.image.name} + {source.config.encoders.text.name}, "
              f"fusion {source.config.fusion.name}), test split {len(test)} rows, {torch.get_num_threads()} threads, "
              f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
              f"onnxruntime {__import__('onnxruntime').__version__}.")
    text = header + "\n\n" + table(lines) + "\n"
    print("\n" + text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
