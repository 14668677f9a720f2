"""`make demo` candidates: training seconds, official test accuracy and peak RSS for each.

Each candidate is `mmfuse train configs/easy_vqa.yaml` with a few `--set` overrides, run in its own
process (so its peak RSS, read with wait4, is its own), one after the other — never two at once on
a 2-core machine. With `--scenes`, the same candidates train on `shape_scenes` and the table gives
the test accuracy per question kind (counting, binding, position), so a faster default is not
bought with generality.

    python bench/demo_speed.py                       # every candidate on easy-VQA
    python bench/demo_speed.py --only base,default   # some of them
    python bench/demo_speed.py --scenes --only base,default
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MMFUSE = str(Path(sys.executable).parent / "mmfuse")

# name -> --set overrides on top of the config file. "default" is what the config says today;
# "base" is the default before issue 16 (20 epochs of the 32-64-128-128 CNN).
CANDIDATES = {
    "base": ["train.epochs=20", "encoders.image.options={channels: [32, 64, 128, 128]}"],
    "default": [],
    "e10": ["train.epochs=10", "encoders.image.options={channels: [32, 64, 128, 128]}"],
    "e6": ["train.epochs=6", "encoders.image.options={channels: [32, 64, 128, 128]}"],
    "narrow-e12": ["train.epochs=12", "encoders.image.options={channels: [16, 32, 64, 128]}"],
    "narrow-e10": ["train.epochs=10", "encoders.image.options={channels: [16, 32, 64, 128]}"],
    "narrow-e6": ["train.epochs=6", "encoders.image.options={channels: [16, 32, 64, 128]}"],
    "narrow-e4": ["train.epochs=4", "encoders.image.options={channels: [16, 32, 64, 128]}"],
    "b16-e6": ["train.epochs=6", "train.batch_size=16", "encoders.image.options={channels: [32, 64, 128, 128]}"],
    "b16-e4": ["train.epochs=4", "train.batch_size=16", "encoders.image.options={channels: [32, 64, 128, 128]}"],
    "narrow-b16-e6": ["train.epochs=6", "train.batch_size=16", "encoders.image.options={channels: [16, 32, 64, 128]}"],
    "narrow-b16-e4": ["train.epochs=4", "train.batch_size=16", "encoders.image.options={channels: [16, 32, 64, 128]}"],
    "px32-e20": ["train.epochs=20", "encoders.image.image_size=32"],
    "px32-e12": ["train.epochs=12", "encoders.image.image_size=32"],
    "px32-e8": ["train.epochs=8", "encoders.image.image_size=32",
                "encoders.image.options={channels: [32, 64, 128]}"],
}

# shape_scenes question kinds, by the question's opening words.
KINDS = [("count all", r"^how many shapes"), ("count colour", r"^how many (red|green|blue|yellow|purple|gray)"),
         ("count shape", r"^how many "), ("binding yes/no", r"^is there a"),
         ("binding colour of shape", r"^what color is the (?!leftmost)"),
         ("binding shape of colour", r"^what shape is the"), ("position", r"leftmost")]


def question_kind(question: str) -> str:
    return next(name for name, pattern in KINDS if re.search(pattern, question))


def run_candidate(config: str, overrides: list[str], out: Path) -> dict:
    """Train one candidate in a child process; wall seconds, peak RSS, and the printed figures."""
    command = [MMFUSE, "train", config, "--output", str(out), "--set", "train.progress_bar=false",
               *[arg for o in overrides for arg in ("--set", o)]]
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    lines: list[str] = []
    reader = threading.Thread(target=_collect, args=(child.stdout, lines), daemon=True)
    reader.start()
    _, status, usage = os.wait4(child.pid, 0)  # this child's own peak RSS, not the largest so far
    child.returncode = os.waitstatus_to_exitcode(status)
    reader.join()
    text = "".join(lines)
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{text[-3000:]}")
    trained = re.search(r"trained (\d+) epochs in ([\d.]+) s", text)
    accuracy = re.search(r"^\s+accuracy\s+([\d.]+)", text, re.M)
    return {"wall_s": time.perf_counter() - start, "train_s": float(trained.group(2)),
            "epochs": int(trained.group(1)), "accuracy": float(accuracy.group(1)) if accuracy else float("nan"),
            "peak_gib": usage.ru_maxrss / 2**20}


def _collect(stream, lines: list[str]) -> None:
    """Keep the child's output; echo its epoch lines to stderr so a long run shows progress."""
    for line in stream:
        lines.append(line)
        if line.startswith("epoch "):
            print("  " + line.rstrip(), file=sys.stderr, flush=True)


def accuracy_by_kind(model_dir: Path) -> dict[str, float]:
    import pandas as pd

    from mmfuse import Predictor
    from mmfuse.data.scenes import load_shape_scenes

    test = load_shape_scenes().query("split == 'test'").reset_index(drop=True)
    predicted = Predictor.load(model_dir).predict(test)
    asked = test.loc[predicted["row"] - 1]  # `row` counts from 1, like the table's rows
    right = predicted["prediction"].to_numpy() == asked["answer"].to_numpy()
    kinds = asked["question"].map(question_kind).to_numpy()
    return pd.Series(right).groupby(kinds).mean().to_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated candidate names")
    parser.add_argument("--scenes", action="store_true", help="train on shape_scenes; accuracy per question kind")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(CANDIDATES)
    config = "configs/shape_scenes.yaml" if args.scenes else "configs/easy_vqa.yaml"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            result = run_candidate(config, CANDIDATES[name], Path(tmp) / name)
            if args.scenes:
                result.update(accuracy_by_kind(Path(tmp) / name / "model"))
            rows.append((name, result))
            print(f"{name}: {result}", file=sys.stderr, flush=True)
    print_table(config, rows)


def print_table(config: str, rows: list[tuple[str, dict]]) -> None:
    extra = [k for k in rows[0][1] if k not in ("wall_s", "train_s", "epochs", "accuracy", "peak_gib")]
    print(f"\n{config}, {os.cpu_count()} cores\n")
    print("| candidate | overrides | epochs | train s | wall s | test accuracy | peak RSS GiB |"
          + "".join(f" {k} |" for k in extra))
    print("|---" * (7 + len(extra)) + "|")
    for name, r in rows:
        print(f"| {name} | {'; '.join(CANDIDATES[name]) or '(config as is)'} | {r['epochs']} | {r['train_s']:.0f} | "
              f"{r['wall_s']:.0f} | {r['accuracy']:.4f} | {r['peak_gib']:.2f} |" + "".join(f" {r[k]:.4f} |" for k in extra))


if __name__ == "__main__":
    main()
