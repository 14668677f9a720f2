"""Tables larger than memory: seconds and peak RSS of each step on generated tables of 10k to 1M rows.

The tables are shape_scenes scenes (`mmfuse.data.scenes`: 64x64 PNG, 6 questions per image, so
1M rows are ~167k images), generated once under `$MMFUSE_DATA/scale-v1-s0` in blocks of 1,000
images (an interrupted generation resumes at its first unfinished block); a table of N rows is the
first N questions, every 20th image in the validation split. Each step runs in a fresh process,
one after the other (peak RSS read with wait4 is that process's own):

  check       `mmfuse data check` of the table (every image decoded once)
  extract     frozen features of every row into an empty feature cache: efficientnet_lite0 at
              64 px (2x2 region tokens of 1,280) + minilm (the questions)
  epoch       one training epoch of a film fusion over those cached features (batches of 256 rows)
  trainable   one epoch with a small_cnn trained from its pixels (+ cached minilm), on the 100k
              table: encoder inputs kept in memory (their size is under train.prepared_memory_mb)
              and decoded per batch (train.prepared_memory_mb=0), with 0 and 1 DataLoader workers

"seconds" is the step's own work (imports excluded), "wall" the whole process.

    python bench/scale.py                         # 10k, 100k and 1M rows (hours on 2 cores)
    python bench/scale.py --sizes 10000,100000
    python bench/scale.py --quick                 # 2k and 20k rows: a check that it all runs
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
BLOCK = 1000  # images per generated block
VAL_EVERY = 20  # every 20th image is a validation image
RESULT = "SCALE_RESULT "


# ----- the tables ---------------------------------------------------------------------------------

def data_folder(seed: int = 0) -> Path:
    from mmfuse.data.scenes import data_root

    return data_root() / f"scale-v1-s{seed}"


def generate_block(folder: Path, block: int, seed: int) -> None:
    """Images block*1000 .. +999 and their questions; COMPLETE marks a finished block."""
    from mmfuse.data.scenes import ask, draw_scene, place_objects

    where = folder / "images" / f"{block:04d}"
    if (where / "COMPLETE").is_file():
        return
    where.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"scale-{seed}-{block}")
    rows = []
    for number in range(block * BLOCK, (block + 1) * BLOCK):
        objects = place_objects(rng)
        image = draw_scene(objects, rng)
        name = f"images/{block:04d}/{number}.png"
        image.save(folder / name)
        split = "val" if number % VAL_EVERY == 0 else "train"
        rows += [{"image": name, "question": q, "answer": a, "split": split} for q, a in ask(objects, rng)]
    pd.DataFrame(rows).to_csv(where / "questions.csv", index=False)
    (where / "COMPLETE").write_text(f"{len(rows)} questions\n")


def table(rows: int, seed: int = 0) -> Path:
    """The first `rows` questions as one CSV (generated once)."""
    folder = data_folder(seed)
    path = folder / f"rows-{rows}.csv"
    if path.is_file():
        return path
    parts, count, block = [], 0, 0
    while count < rows:
        generate_block(folder, block, seed)
        part = pd.read_csv(folder / "images" / f"{block:04d}" / "questions.csv", keep_default_na=False)
        parts.append(part)
        count += len(part)
        block += 1
    pd.concat(parts).head(rows).to_csv(path.with_suffix(".tmp"), index=False)
    path.with_suffix(".tmp").rename(path)
    return path


# ----- the configs --------------------------------------------------------------------------------

def config(table_path: Path, rows: int, step: str, run: Path, extra: dict | None = None, tag: str = "") -> Path:
    """A config file for one step: frozen efficientnet_lite0 + minilm, or a trainable small_cnn."""
    trainable = step == "trainable"
    image = {"name": "small_cnn", "image_size": 64} if trainable else {"name": "efficientnet_lite0", "image_size": 64}
    spec = {
        "task": "classification",
        "data": {"source": str(table_path), "test_fraction": 0.0,  # the split column's train and val rows
                 "columns": {"image": "image", "text": "question", "label": "answer", "split": "split"}},
        "encoders": {"image": image, "text": {"name": "minilm"}},
        "fusion": {"name": "film", "dim": 128, "options": {"pool": "sum"}},
        "head": {"hidden": 256, "dropout": 0.1},
        "train": {"epochs": 1, "batch_size": 64 if trainable else 256, "group_by_image": trainable,
                  "progress_bar": False, "keep": "last", "seed": 0, **(extra or {})},
        "cache_dir": str(run / f"cache-{rows}"),
        "output_dir": str(run / f"run-{rows}-{step}"),
    }
    path = run / f"config-{rows}-{step}{tag}.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


# ----- one step, in its own process ---------------------------------------------------------------

def run_step(step: str, config_path: Path) -> dict:
    """The step's work in this process; returns what it measured (imports done before the clock)."""
    from mmfuse.cli import app
    from mmfuse.config import load_config
    from mmfuse.predictor import Predictor

    cfg = load_config(config_path)
    start = time.perf_counter()
    if step == "check":  # the command itself, as a user types it
        app(["data", "check", cfg.data.source, "--config", str(config_path), "--limit", "5"], standalone_mode=False)
        return {"seconds": time.perf_counter() - start}
    if step == "extract":
        from mmfuse.model import build_encoders, build_model

        predictor = Predictor(cfg)
        parts = predictor.splits()
        predictor.labels = predictor.task.label_set(parts["train"]["label"])
        predictor.model = build_model(cfg, len(predictor.labels), build_encoders(cfg))
        for name in ("train", "val"):
            predictor._dataset(parts[name])
        seconds = time.perf_counter() - start
        shards = list(Path(cfg.cache_dir).rglob("*.safetensors"))
        return {"seconds": seconds, "cache_mb": sum(p.stat().st_size for p in shards) / 2**20, "shards": len(shards)}
    predictor = Predictor(cfg).fit()
    return {"seconds": predictor.fit_summary["train_seconds"], "total_seconds": time.perf_counter() - start}


def measure(step: str, config_path: Path) -> dict:
    """Run one step in a child process: its result, wall seconds and peak RSS (MB)."""
    command = [sys.executable, __file__, "--step", step, "--config", str(config_path)]
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)  # this child's own peak RSS
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{output[-3000:]}")
    line = next(line for line in output.splitlines() if line.startswith(RESULT))
    return {**json.loads(line[len(RESULT):]), "wall": time.perf_counter() - start, "peak_mb": usage.ru_maxrss / 1024}


# ----- the benchmark ------------------------------------------------------------------------------

def bench(sizes: list[int], trainable_rows: int | None, run: Path) -> list[dict]:
    results = []
    for rows in sizes:
        start = time.perf_counter()
        path = table(rows)
        print(f"{rows} rows: table ready in {time.perf_counter() - start:.0f} s ({path})", file=sys.stderr, flush=True)
        shutil.rmtree(run / f"cache-{rows}", ignore_errors=True)  # extraction computes every feature
        for step in ("check", "extract", "epoch"):
            results.append({"rows": rows, "step": step, **measure(step, config(path, rows, step, run))})
            print(f"  {results[-1]}", file=sys.stderr, flush=True)
    if trainable_rows:
        path = table(trainable_rows)
        variants = [("in memory, 0 workers", {}), ("per batch, 0 workers", {"prepared_memory_mb": 0}),
                    ("per batch, 1 worker", {"prepared_memory_mb": 0, "num_workers": 1})]
        for number, (name, extra) in enumerate(variants):
            result = measure("trainable", config(path, trainable_rows, "trainable", run, extra, f"-{number}"))
            results.append({"rows": trainable_rows, "step": f"trainable epoch ({name})", **result})
            print(f"  {results[-1]}", file=sys.stderr, flush=True)
    return results


def report(results: list[dict]) -> None:
    print(f"\n{os.cpu_count()} cores; frozen: efficientnet_lite0 64 px + minilm; trainable: small_cnn 64 px\n")
    print("| rows | step | seconds | wall s | s per 1k rows | peak RSS MB | feature cache |")
    print("|---:|---|---:|---:|---:|---:|---|")
    for r in results:
        cache = f"{r['cache_mb']:.0f} MB in {r['shards']} shards" if "cache_mb" in r else ""
        print(f"| {r['rows']:,} | {r['step']} | {r['seconds']:.1f} | {r['wall']:.1f} | "
              f"{1000 * r['seconds'] / r['rows']:.3f} | {r['peak_mb']:.0f} | {cache} |")
    sizes = sorted({r["rows"] for r in results if r["step"] in ("check", "extract", "epoch")})
    if len(sizes) > 1:
        small, large = sizes[0], sizes[-1]
        print()
        for step in ("check", "extract", "epoch"):
            a = next(r for r in results if r["rows"] == small and r["step"] == step)
            b = next(r for r in results if r["rows"] == large and r["step"] == step)
            print(f"{step}: peak RSS {large:,} / {small:,} rows = {b['peak_mb'] / a['peak_mb']:.2f}x; "
                  f"seconds per 1k rows {1000 * a['seconds'] / small:.3f} -> {1000 * b['seconds'] / large:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="table sizes in rows, comma-separated")
    parser.add_argument("--quick", action="store_true", help="2k and 20k rows (trainable epoch on 20k)")
    parser.add_argument("--trainable-rows", type=int, default=None,
                        help="table for the trainable-encoder epoch (default: 100000 if in --sizes, else the largest)")
    parser.add_argument("--run", type=Path, default=None, help="folder for caches and runs (default: DATA/runs)")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        print(RESULT + json.dumps(run_step(args.step, args.config)), flush=True)
        return
    sizes = [2000, 20000] if args.quick else [int(s) for s in args.sizes.split(",")]
    trainable = args.trainable_rows or (100_000 if 100_000 in sizes else max(sizes))
    run = args.run or data_folder() / "runs"
    run.mkdir(parents=True, exist_ok=True)
    report(bench(sizes, trainable, run))


if __name__ == "__main__":
    main()
