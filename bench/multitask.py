"""Multi-task on shape_scenes: each task trained alone vs all four together, under each sharing
mode (fixed weights) and each loss weighting (hard sharing), over seeds; the same epochs and
settings everywhere (configs/shape_scenes_multitask.yaml: frozen EfficientNet-Lite0 and MiniLM,
features cached once, FiLM fusion). Scored on the official test split: accuracy for answer,
question_type and shape_count, micro-F1 for objects (multi-label). Mean ± std over seeds.

    python bench/multitask.py [--seeds 3] [--epochs 8] [--out runs/multitask_bench]
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from mmfuse.config import load_config  # noqa: E402
from mmfuse.multitask.run import train_multitask  # noqa: E402

CONFIG = ROOT / "configs/shape_scenes_multitask.yaml"
TOGETHER = [("hard", "fixed"), ("soft", "fixed"), ("hierarchical", "fixed"),
            ("hard", "uncertainty"), ("hard", "gradnorm"), ("hard", "pcgrad")]


def run(settings: dict, seed: int, epochs: int, out: Path, only: str | None = None) -> dict[str, float]:
    overrides = [f"train.seed={seed}", f"train.epochs={epochs}", "train.progress_bar=false",
                 f"output_dir={out}", *(f"multitask.{k}={v}" for k, v in settings.items())]
    config = load_config(CONFIG, overrides)
    if only is not None:
        config.multitask.sharing = "hard"
        config.multitask.tasks = [t for t in config.multitask.tasks if t.name == only]
    result = train_multitask(config, echo=lambda line: None)
    return {name: r["metrics"][r["headline"]] for name, r in result["tasks"].items()} | {
        "seconds": result["fit"]["train_seconds"]}


def cell(values: list[float]) -> str:
    if not values:
        return "—"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {spread:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "runs/multitask_bench")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tasks = [t.name for t in load_config(CONFIG).multitask.tasks]
    rows: dict[str, dict[str, list[float]]] = {}
    start = time.perf_counter()
    for seed in range(args.seeds):
        for name in tasks:
            scores = run({}, seed, args.epochs, args.out / "alone", only=name)
            rows.setdefault("each task alone", {}).setdefault(name, []).append(scores[name])
            rows["each task alone"].setdefault("seconds", []).append(scores["seconds"])
        for sharing, weighting in TOGETHER:
            label = f"together: {sharing} sharing, {weighting}"
            scores = run({"sharing": sharing, "weighting": weighting}, seed, args.epochs, args.out / "together")
            for key, value in scores.items():
                rows.setdefault(label, {}).setdefault(key, []).append(value)
        print(f"seed {seed} done ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    header = ["setting", *(f"{t}" for t in tasks), "train s / run"]
    print("| " + " | ".join(header) + " |")
    print("|---" * len(header) + "|")
    for label, values in rows.items():
        seconds = values.get("seconds", [])
        if label == "each task alone":  # one run per task: the time of all of them
            seconds = [sum(seconds[i:i + len(tasks)]) for i in range(0, len(seconds), len(tasks))]
        print(f"| {label} | " + " | ".join(cell(values.get(t, [])) for t in tasks)
              + f" | {statistics.mean(seconds):.1f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
