"""`mmfuse compare` in-process and on Ray: the same table, and the wall time of each.

Runs the same comparison twice as a user would, `mmfuse compare CONFIG --fusions ... --seeds ...`
with the local backend and with `--backend ray` (a local Ray started by the command), each into its
own folder with its own feature cache (so each extracts the features itself: Ray Data on Ray),
then checks that every cell's results match exactly (all columns but the costs: train seconds,
latency, peak memory, torch threads) and prints both wall times.

    python bench/compare_backends.py                          # shape_scenes, 3 fusions × 2 seeds
    python bench/compare_backends.py --images 40 --set train.epochs=1 --set 'compare.robustness_levels=[]'

`--images N` keeps the first N images of each split of shape_scenes (a quick check of the script).
Output folders under --out are deleted and rewritten.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
COSTS = ["train_s", "latency_ms_per_row", "peak_rss_mb", "torch_threads"]  # where a cell ran, not what it computed


def subset_table(images: int, out: Path) -> Path:
    """The first `images` images of each shape_scenes split, with all their questions."""
    from mmfuse.data.scenes import load_shape_scenes

    frame = load_shape_scenes()
    kept = frame.groupby("split")["image"].apply(lambda s: list(dict.fromkeys(s))[:images]).explode()
    path = out / "table.csv"
    frame[frame["image"].isin(set(kept))].to_csv(path, index=False)
    return path


def run(backend: str, args: argparse.Namespace, sets: list[str]) -> float:
    folder = args.out / backend
    shutil.rmtree(folder, ignore_errors=True)  # no reused cells, no cached features: a full run
    folder.mkdir(parents=True)
    command = [sys.executable, "-m", "mmfuse.cli", "compare", str(args.config), "--fusions", args.fusions,
               "--seeds", str(args.seeds), "--out", str(folder / "compare"), "--set", f"cache_dir={folder / 'cache'}",
               *(part for item in sets for part in ("--set", item))]
    if backend == "ray":
        command += ["--backend", "ray"]
    print(f"{backend}: {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    with open(folder / "log.txt", "w") as log:
        code = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - start
    if code != 0:
        sys.exit(f"{backend}: mmfuse compare failed (exit {code}); its output: {folder / 'log.txt'}\n"
                 + (folder / "log.txt").read_text()[-3000:])
    print(f"{backend}: {seconds:.1f} s", flush=True)
    return seconds


def differences(local: pd.DataFrame, ray: pd.DataFrame) -> list[str]:
    """Each cell and column whose value differs between the two tables."""
    same = [c for c in local.columns if c not in COSTS]
    if sorted(local["cell"]) != sorted(ray["cell"]) or set(local.columns) != set(ray.columns):
        return [f"cells or columns differ: {sorted(local['cell'])} vs {sorted(ray['cell'])}"]
    a, b = local.set_index("cell").sort_index(), ray.set_index("cell").sort_index()
    found = []
    for column in (c for c in same if c != "cell"):
        for cell in a.index:
            x, y = a.at[cell, column], b.at[cell, column]
            if not (x == y or (pd.isna(x) and pd.isna(y))):
                found.append(f"{cell} {column}: local {x!r}, ray {y!r}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "shape_scenes.yaml")
    parser.add_argument("--fusions", default="film,concat,gated")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--images", type=int, default=None, help="First N images per split (a quick check).")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="Passed to compare as --set.")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_backends")
    args = parser.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    sets = list(args.sets)
    if args.images is not None:
        sets.append(f"data.source={subset_table(args.images, args.out)}")

    seconds = {backend: run(backend, args, sets) for backend in ("local", "ray")}
    tables = {backend: pd.read_csv(args.out / backend / "compare" / "comparison.csv") for backend in seconds}
    found = differences(tables["local"], tables["ray"])
    cells = len(tables["local"])
    compared = len([c for c in tables["local"].columns if c not in COSTS]) - 1

    print("\n" + (args.out / "local" / "compare" / "comparison.md").read_text().split("\n\n")[2] + "\n")
    print("| backend | wall s | cells | same as local |")
    print("|---|---|---|---|")
    print(f"| local (cells one by one, forkserver children) | {seconds['local']:.1f} | {cells} | — |")
    print(f"| ray (a local Ray started by the command) | {seconds['ray']:.1f} | {len(tables['ray'])} | "
          + ("yes: every cell, " + f"{compared} columns, exactly" if not found else f"NO: {len(found)} differences")
          + " |")
    print("\nwall s: the whole command (reading the table, feature extraction into an empty cache, every cell, "
          "the report); costs (train s, latency, peak MB, threads) are left out of the comparison.")
    if found:
        print("\n".join(found[:20]))
        sys.exit(1)


if __name__ == "__main__":
    main()
