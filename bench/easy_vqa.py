"""Every fusion strategy on easy-VQA with the packaged backbones frozen.

EfficientNet-Lite0 (ImageNet, 128 px, 4x4 region tokens) + MiniLM features are extracted once into
a fresh feature cache (timed), then each fusion trains in its own process (so peak RSS is its own)
on the cached features and is scored on the official test split.

    python bench/easy_vqa.py [--fusions concat,film] [--epochs 6] [--out docs/bench_easy_vqa.md]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Running this file puts bench/ first on sys.path, where this very file would shadow the
# `easy_vqa` data package: drop it.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def config_overrides(fusion: str, epochs: int, cache: str, out: str) -> list[str]:
    return [
        "encoders.image.name=efficientnet_lite0", "encoders.image.image_size=128",
        "encoders.text.name=minilm", f"fusion.name={fusion}",
        "fusion.options={pool: sum}" if fusion == "film" else "fusion.options={}",
        # Cached features make a step cheap: batch rows (not images) for more, smaller steps.
        f"train.epochs={epochs}", "train.lr=0.002", "train.group_by_image=false", "train.batch_size=128",
        "train.progress_bar=false",
        f"cache_dir={cache}", f"output_dir={out}",
    ]


def run_one(fusion: str, epochs: int, cache: str) -> dict:
    """Runs in a child process: train, evaluate on test, time inference."""
    import torch

    from mmfuse import Predictor, load_config
    from mmfuse.evaluate import predict_outputs

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as out:
        config = load_config(ROOT / "configs/easy_vqa.yaml", config_overrides(fusion, epochs, cache, out))
        predictor = Predictor(config).fit()
        test = predictor._test_frame
        result = predictor.evaluate(test)
        dataset = predictor._dataset(test)
        start = time.perf_counter()
        predict_outputs(predictor.model, dataset, config)
        rows_per_s = len(test) / (time.perf_counter() - start)
    params = sum(p.numel() for n, p in predictor.model.named_parameters() if p.requires_grad)
    return {"fusion": fusion, "accuracy": result["metrics"]["accuracy"], "macro_f1": result["metrics"]["macro_f1"],
            "train_s": predictor.fit_summary["train_seconds"], "rows_per_s": rows_per_s, "params": params,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def extract(cache: str) -> float:
    """Fill the cache for train + test once; return the seconds (images and texts)."""
    from mmfuse import Predictor, load_config
    from mmfuse.model import build_encoders, build_model

    config = load_config(ROOT / "configs/easy_vqa.yaml", config_overrides("concat", 1, cache, "/tmp/unused"))
    predictor = Predictor(config)
    parts = predictor.splits()
    predictor.labels = sorted(set(parts["train"]["label"]))
    predictor.model = build_model(config, len(predictor.labels), build_encoders(config))
    start = time.perf_counter()
    for frame in parts.values():
        predictor._dataset(frame)
    return time.perf_counter() - start


def main() -> None:
    from mmfuse.fusion import available_fusions

    parser = argparse.ArgumentParser()
    parser.add_argument("--fusions", default=",".join(available_fusions()))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--cache", default=None, help="feature cache dir (default: a fresh temporary one)")
    parser.add_argument("--out", default=None, help="also write the table (markdown) here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args.epochs, args.cache)))
        return
    cache = args.cache or tempfile.mkdtemp(prefix="mmfuse-bench-cache-")
    seconds = extract(cache)
    print(f"feature extraction (5,000 images at 128 px + 107 questions, fresh cache): {seconds:.1f} s", flush=True)
    rows = []
    for fusion in args.fusions.split(","):
        done = subprocess.run([sys.executable, __file__, "--child", fusion, "--epochs", str(args.epochs),
                               "--cache", cache], capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{fusion}: failed\n{done.stderr[-2000:]}", flush=True)
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"{fusion}: {rows[-1]}", flush=True)
    header = ("| fusion | test acc | macro-F1 | train s | feature s | infer rows/s | trainable params | peak RSS MB |\n"
              "|---|---|---|---|---|---|---|---|")
    lines = [header] + [
        f"| {r['fusion']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | {r['train_s']:.1f} | {seconds:.1f} | "
        f"{r['rows_per_s']:.0f} | {r['params']:,} | {r['peak_rss_mb']:.0f} |" for r in rows]
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
