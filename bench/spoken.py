"""Spoken questions (`easy_vqa_spoken`): train a config, then score its official test split by which
question modalities each row keeps (spoken, written, both, neither) and by voice (heard in training
or never heard).

    python bench/spoken.py configs/easy_vqa_spoken.yaml [--set train.epochs=12] [--model RUN/model]

Prints one table; training seconds and peak RSS of this process come first. With --model, an
already trained model is scored instead of training one.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from mmfuse import Predictor, load_config  # noqa: E402
from mmfuse.data.datasets import builtin_columns, load_builtin  # noqa: E402


def subsets(modalities: list[str]) -> dict[str, list[str]]:
    """Question modalities kept per subset (the image is always there)."""
    question = [m for m in ("audio", "text") if m in modalities]
    out = {"+".join(["image", *question]): question}
    for m in question:
        out[f"image+{m}"] = [m]
    out["image only"] = []
    for m in question:
        out[f"{m} only (no image)"] = [m]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    start = time.perf_counter()
    if args.model:
        predictor = Predictor.load(args.model)
        train_s = float("nan")
    else:
        predictor = Predictor(load_config(args.config, args.set + ["train.progress_bar=false"])).fit()
        train_s = predictor.fit_summary["train_seconds"]
        predictor.save(Path(predictor.config.output_dir) / "model")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print(f"train {train_s:.1f} s (whole fit {time.perf_counter() - start:.1f} s), peak RSS {rss:.2f} GB")

    table = load_builtin("easy_vqa_spoken")
    table = table[table["split"] == "test"]
    columns = builtin_columns("easy_vqa_spoken")
    modalities = predictor.model.modalities
    # The model reads written questions only if it was built with a text encoder.
    written = columns["text"] if "text" in modalities else None
    print("\n| question given | voices | rows | accuracy |\n|---|---|---|---|")
    for name, keep in subsets(modalities).items():
        frame = table.copy()
        for m in ("audio", "text"):
            if m not in keep:
                frame[columns[m] if m != "text" else (written or columns[m])] = None
        if "no image" in name:
            frame[columns["image"]] = None
        groups = {"all": frame, "heard": frame[frame["voice_heard"] == "yes"],
                  "never heard": frame[frame["voice_heard"] == "no"]} if "audio" in keep else {"all": frame}
        for voices, part in groups.items():
            result = predictor.evaluate(part.reset_index(drop=True))
            print(f"| {name} | {voices} | {result['rows']} | {result['metrics']['accuracy']:.4f} |")
    print("\nBy held-out voice (the question spoken only):\n\n| voice | rows | accuracy |\n|---|---|---|")
    unheard = table[table["voice_heard"] == "no"]
    for voice, part in unheard.groupby("voice"):
        part = part.assign(**({written: None} if written else {})).reset_index(drop=True)
        print(f"| {voice} | {len(part)} | {predictor.evaluate(part)['metrics']['accuracy']:.4f} |")


if __name__ == "__main__":
    main()
