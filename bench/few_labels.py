"""Learning from few labels, USB-style: test accuracy with 1%, 5% and 10% of the training IMAGES
labelled (every question of a labelled image labelled, the rest unlabelled), three ways:

- supervised only: the labelled rows alone, for as many optimizer steps as the semi-supervised run;
- semi-supervised: the labelled rows plus the unlabelled ones with pseudo-labels (`semi_supervised`);
- fully supervised: every training row labelled (the ceiling; the same for every fraction).

Each data set's `compare:` settings (EfficientNet-Lite0 frozen at 64 px and MiniLM, features cached
once; batches of 256 rows) with FiLM fusion; or with --trainable the data set's own config (the
small CNN trained from scratch on the pixels, batches of images: pixel jitter is then a strong view
and pseudo-labels can teach the image encoder). Every run the same epochs (an epoch of the
semi-supervised run is one pass over the unlabelled rows or images). The label set is known in
advance (data.labels), as in USB. Scored on the official test split; gap closed =
(semi - sup) / (full - sup).

    python bench/few_labels.py [--quick] [--datasets easy_vqa,shape_scenes] [--fractions 0.01,0.05,0.1]
                               [--seeds 3] [--epochs 8] [--adaptive freematch] [--trainable]
                               [--modality-dropout 0.2] [--feature-dropout 0] [--image-augment]
                               [--reuse runs/few_labels/results.json ...] [--distribution-alignment]
                               [--out runs/few_labels]
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# bench/easy_vqa.py would shadow the `easy_vqa` data package: drop this folder from the path.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mmfuse import Predictor  # noqa: E402
from mmfuse.config import SemiSupervisedConfig, parse_config, set_path  # noqa: E402
from mmfuse.data.datasets import load_builtin  # noqa: E402
from mmfuse.safe_yaml import read_yaml  # noqa: E402

CONFIGS = {"easy_vqa": ROOT / "configs/easy_vqa.yaml", "shape_scenes": ROOT / "configs/shape_scenes.yaml"}


TRAINABLE = False  # --trainable: the data set's own config (the small CNN trained on pixels)
IMAGE_AUGMENT = False  # --image-augment: weak pixel augmentation of every training batch (all three ways)
# --reuse: earlier results files, each {"results": ..., "same_semi": whether its semi_supervised settings are these}
REUSE: list[dict] = []


def base_config(name: str, epochs: int, labels: list[str], out: str, **overrides) -> dict:
    """The data set's config with its compare settings (frozen, cached encoders), FiLM fusion;
    with --trainable its own settings (a small CNN trained from scratch, batches of images)."""
    raw = read_yaml(CONFIGS[name])
    frozen = {} if TRAINABLE else raw.get("compare", {}).get("set", {})
    for key, value in {**frozen, **overrides}.items():
        set_path(raw, key, value)
    raw.update(tune={}, compare={})
    if not TRAINABLE:
        set_path(raw, "encoders.image.options", {})  # the small CNN's options do not fit EfficientNet
    set_path(raw, "train.epochs", epochs)
    set_path(raw, "train.image_augment", IMAGE_AUGMENT)
    set_path(raw, "train.keep", "last")  # no validation split: a few labels would not spare one
    set_path(raw, "train.progress_bar", False)
    set_path(raw, "data.labels", labels)
    set_path(raw, "output_dir", out)
    return raw


def label_images(train: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """The training table with only `fraction` of its images labelled; the truth kept aside in
    label_hidden (read for the pseudo-label accuracy only)."""
    images = np.array(sorted(train["image"].unique()))
    count = max(1, round(fraction * len(images)))
    chosen = set(np.random.default_rng(seed).choice(images, size=count, replace=False))
    frame = train.assign(label_hidden=train["answer"])
    frame.loc[~frame["image"].isin(chosen), "answer"] = None
    return frame


def run(raw: dict, train: pd.DataFrame, test: pd.DataFrame) -> dict:
    predictor = Predictor(parse_config(raw)).fit(train)
    accuracy = predictor.evaluate(test)["metrics"]["accuracy"]
    return {"accuracy": accuracy, "train_s": predictor.fit_summary["train_seconds"],
            "semi": predictor.fit_summary.get("semi_supervised")}


def reused(name: str, kind: str, fraction: float | None, seed: int) -> dict | None:
    """Seed `seed`'s `kind` run (full, sup or semi) from the first --reuse file that has it (seeds
    run in order from 0), marked; semi-supervised runs only from a file with the same settings."""
    for earlier in REUSE:
        data = earlier["results"].get(name)
        if data is None or (kind == "semi" and not earlier["same_semi"]):
            continue
        runs = data["full"] if kind == "full" else data["fractions"].get(str(fraction), {}).get(kind, [])
        if seed < len(runs):
            return {**runs[seed], "reused": True}
    return None


def steps(rows: int, batch: int) -> int:
    return math.ceil(rows / batch)


def bench_dataset(name: str, fractions: list[float], seeds: list[int], epochs: int, semi: dict, out: Path) -> dict:
    table = load_builtin(name)
    train, test = table[table["split"] == "train"].reset_index(drop=True), table[table["split"] == "test"]
    train, test = train.drop(columns="split"), test.drop(columns="split")
    labels = sorted(table["answer"].unique().tolist())
    raw = read_yaml(CONFIGS[name])
    # A step takes batch_size images with all their questions (group_by_image) or batch_size rows.
    by_image = TRAINABLE and raw["train"].get("group_by_image", False)
    batch = raw["train"]["batch_size"] if TRAINABLE else 256
    units = (lambda frame: frame["image"].nunique()) if by_image else len  # noqa: E731
    result = {"full": [], "fractions": {}}
    for seed in seeds:
        raw = base_config(name, epochs, labels, str(out / f"{name}-full-{seed}"), **{"train.seed": seed})
        result["full"].append(reused(name, "full", None, seed) or run(raw, train, test))
        print(f"{name} full seed {seed}: {result['full'][-1]['accuracy']:.4f}", flush=True)
    for fraction in fractions:
        cell = result["fractions"][fraction] = {"sup": [], "semi": []}
        for seed in seeds:
            frame = label_images(train, fraction, seed)
            labelled = frame[frame["answer"].notna()]
            unlabelled = frame[frame["answer"].isna()]
            # Supervised only gets the semi-supervised run's optimizer steps (USB compares at equal iterations).
            semi_steps = epochs * max(steps(units(labelled), batch), steps(units(unlabelled), batch * semi["ratio"]))
            sup_epochs = math.ceil(semi_steps / steps(units(labelled), batch))
            raw = base_config(name, sup_epochs, labels, str(out / f"{name}-sup-{fraction}-{seed}"),
                              **{"train.seed": seed})
            cell["sup"].append(reused(name, "sup", fraction, seed)
                               or run(raw, labelled.drop(columns="label_hidden"), test))
            raw = base_config(name, epochs, labels, str(out / f"{name}-semi-{fraction}-{seed}"),
                              **{"train.seed": seed, "semi_supervised": {**semi, "truth_column": "label_hidden"}})
            cell["semi"].append(reused(name, "semi", fraction, seed) or run(raw, frame, test))
            cell.setdefault("images", labelled["image"].nunique())
            cell.setdefault("rows", len(labelled))
            print(f"{name} {fraction:.0%} seed {seed}: sup {cell['sup'][-1]['accuracy']:.4f} "
                  f"({sup_epochs} epochs), semi {cell['semi'][-1]['accuracy']:.4f}", flush=True)
    return result


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {spread:.4f}"


def accuracies(runs: list[dict]) -> list[float]:
    return [r["accuracy"] for r in runs]


def table(results: dict) -> list[str]:
    lines = ["| data set | labelled images | labelled rows | supervised only | semi-supervised | fully supervised "
             "| gap closed | train s (sup / semi / full) |", "|---|---|---|---|---|---|---|---|"]
    for name, result in results.items():
        full = accuracies(result["full"])
        full_s = statistics.mean(r["train_s"] for r in result["full"])
        for fraction, cell in result["fractions"].items():
            sup, semi = accuracies(cell["sup"]), accuracies(cell["semi"])
            gap = statistics.mean(full) - statistics.mean(sup)
            closed = (f"{(statistics.mean(semi) - statistics.mean(sup)) / gap:.2f}" if gap > 0
                      else "no gap (supervised only ≥ full)")
            seconds = [statistics.mean(r["train_s"] for r in cell[k]) for k in ("sup", "semi")]
            lines.append(f"| {name} | {fraction:.0%} ({cell['images']}) | {cell['rows']} | {mean_std(sup)} | "
                         f"{mean_std(semi)} | {mean_std(full)} | {closed} | "
                         f"{seconds[0]:.0f} / {seconds[1]:.0f} / {full_s:.0f} |")
    return lines


def pseudo_label_lines(results: dict) -> list[str]:
    lines = []
    for name, result in results.items():
        fraction = 0.05 if 0.05 in result["fractions"] else next(iter(result["fractions"]))
        history = result["fractions"][fraction]["semi"][0]["semi"]
        lines += [f"", f"Pseudo-labels per epoch, {name}, {fraction:.0%} labelled, first seed "
                  f"({history['labelled']} labelled, {history['unlabelled']} unlabelled rows):", "",
                  "| epoch | threshold (mean over classes) | mask rate | accuracy of used pseudo-labels | accuracy of all |",
                  "|---|---|---|---|---|"]
        show = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
        for e in history["epochs"]:
            lines.append(f"| {e['epoch']}{' (warm-up)' if e['warmup'] else ''} | {e['threshold']:.4f} | "
                         f"{show(e['mask_rate'])} | {show(e['pseudo_label_accuracy'])} | {show(e['pseudo_label_accuracy_all'])} |")
    return lines


def read_reused(path: Path, args: argparse.Namespace, semi: dict) -> dict:
    """An --reuse file's results, checked to come from runs these settings would repeat."""
    if not path.is_file():
        sys.exit(f"--reuse {path}: no such file (a results.json that bench/few_labels.py wrote)")
    earlier = json.loads(path.read_text())
    differ = [k for k in ("trainable", "image_augment", "epochs", "ratio") if earlier["settings"].get(k) != vars(args)[k]]
    if differ:
        sys.exit(f"--reuse {path}: its runs differ in {', '.join(differ)}; only semi_supervised may differ")
    # A setting an older file lacks was then the section's default.
    theirs = earlier["settings"]["semi"]
    same = all(theirs.get(k, SemiSupervisedConfig.model_fields[k].default) == v for k, v in semi.items())
    return {"results": earlier["results"], "same_semi": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="5%% only, one seed")
    parser.add_argument("--datasets", default="easy_vqa,shape_scenes")
    parser.add_argument("--fractions", default="0.01,0.05,0.1")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--adaptive", default="freematch", choices=["none", "freematch", "flexmatch"])
    parser.add_argument("--threshold", type=float, default=0.95, help="tau for adaptive none / flexmatch")
    parser.add_argument("--ratio", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--modality-dropout", type=float, default=0.2)
    parser.add_argument("--feature-dropout", type=float, default=0.0)
    parser.add_argument("--distribution-alignment", action="store_true",
                        help="ReMixMatch's distribution alignment of the weak view's probabilities")
    parser.add_argument("--trainable", action="store_true",
                        help="the data set's own config (small CNN trained on pixels: pixel jitter is a strong view)")
    parser.add_argument("--image-augment", action="store_true",
                        help="weak pixel augmentation (a small shift) of every training batch, as FixMatch's labelled "
                             "batches and weak views; applied alike to supervised-only and fully supervised runs")
    parser.add_argument("--reuse", action="append", default=[],
                        help="an earlier run's results.json with the same epochs and model settings (repeatable): its "
                             "fully supervised and supervised-only runs are taken, not run again, and its "
                             "semi-supervised ones too where its semi_supervised settings are the same")
    parser.add_argument("--out", default=str(ROOT / "runs/few_labels"))
    args = parser.parse_args()
    global TRAINABLE, IMAGE_AUGMENT
    TRAINABLE, IMAGE_AUGMENT = args.trainable, args.image_augment
    logging.basicConfig(level=logging.ERROR)
    fractions = [0.05] if args.quick else [float(f) for f in args.fractions.split(",")]
    seeds = list(range(1 if args.quick else args.seeds))
    semi = {"adaptive": args.adaptive, "ratio": args.ratio, "warmup_epochs": args.warmup,
            "modality_dropout": args.modality_dropout, "feature_dropout": args.feature_dropout,
            "distribution_alignment": args.distribution_alignment}
    if args.adaptive != "freematch":
        semi["threshold"] = args.threshold
    for path in args.reuse:
        REUSE.append(read_reused(Path(path), args, semi))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory(dir=out) as runs:
        for name in args.datasets.split(","):
            results[name] = bench_dataset(name, fractions, seeds, args.epochs, semi, Path(runs))
    wall = time.perf_counter() - start
    print()
    print(f"`python bench/few_labels.py {' '.join(sys.argv[1:])}` — semi_supervised {json.dumps(semi)}; "
          f"{args.epochs} epochs, seeds {seeds}; wall {wall / 60:.1f} min")
    print()
    print("\n".join(table(results) + pseudo_label_lines(results)))
    (out / "results.json").write_text(json.dumps({"settings": {**vars(args), "semi": semi}, "results": results},
                                                 indent=1, default=str))


if __name__ == "__main__":
    main()
