"""Alignment objectives on easy-VQA: retrieval on the official test split, and honest zero-shot.

    .venv/bin/python bench/align.py [--config configs/easy_vqa_align.yaml] [--seeds 3]

Frozen packaged backbones (EfficientNet-Lite0 at 128 px, MiniLM), features cached; only the
projection heads train, on the 4,000 train images with derived captions ("a blue rectangle").
Table 1: every objective alone and contrastive + each other one (weight 0.5), mean ± std over
seeds, text->image and image->text recall, training seconds (heads only; features cached).
Table 2: zero-shot on colour-shape pairs held out of alignment training entirely, beside chance
and a supervised linear classifier on the same frozen image features trained on all 24 pairs.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch

# bench/ holds easy_vqa.py, which would shadow the easy_vqa package: drop the script's folder.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mmfuse.align.model import build_align_encoders  # noqa: E402
from mmfuse.align.train import (evaluate_pairs, fit_aligned, load_splits, pair_features,  # noqa: E402
                                zero_shot_pairs)
from mmfuse.config import load_config  # noqa: E402
from mmfuse.encoders.cache import FeatureCache  # noqa: E402

RUNS = [
    {"contrastive": 1.0}, {"dcca": 1.0}, {"autoencoder": 1.0}, {"adversarial": 1.0},
    {"contrastive": 1.0, "dcca": 0.5}, {"contrastive": 1.0, "autoencoder": 0.5},
    {"contrastive": 1.0, "adversarial": 0.5},
]
HOLDOUT = ["a red circle", "a blue triangle", "a green rectangle", "a yellow triangle", "a gray circle",
           "a teal rectangle"]
SHOWN = ["t2i_R@1", "t2i_R@5", "t2i_R@10", "i2t_R@1", "i2t_R@5"]


def name_of(objectives: dict[str, float]) -> str:
    return " + ".join(k if v == 1.0 else f"{v:g}·{k}" for k, v in objectives.items())


def features_for(config, encoders):
    """Splits and cached features of train and test (built once per split, reused by every run)."""
    splits = load_splits(config, config.align)
    cache = FeatureCache(config.cache_dir)
    return splits, encoders, {name: pair_features(splits[name], encoders, cache, config.data)
                              for name in ("train", "test")}


def mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def retrieval_table(config, encoders, seeds: int) -> None:
    _, encoders, data = features_for(config, encoders)
    print(f"\n## Retrieval, easy-VQA test ({len(data['test'])} images, captions derived from answers)\n")
    print(f"train pairs {len(data['train'])}, dim {config.align.dim}, {config.align.epochs} epochs, "
          f"batch {config.align.batch_size}, lr {config.align.lr}; {seeds} seed(s): mean ± std\n")
    print("| objectives | " + " | ".join(SHOWN) + " | train s |")
    print("|---" * (len(SHOWN) + 2) + "|")
    for objectives in RUNS:
        scores, seconds = {k: [] for k in SHOWN}, []
        for seed in range(seeds):
            run_config = config.model_copy(update={"align": config.align.model_copy(
                update={"objectives": objectives, "seed": seed})})
            model, summary = fit_aligned(run_config, encoders, data["train"], echo=lambda _: None)
            metrics = evaluate_pairs(model, data["test"])
            for key in SHOWN:
                scores[key].append(metrics[key])
            seconds.append(summary["train_seconds"])
        print(f"| {name_of(objectives)} | " + " | ".join(mean_std(scores[k]) for k in SHOWN)
              + f" | {np.mean(seconds):.1f} |", flush=True)


def linear_probe(train, test, labels_train: list[str], labels_test: list[str], epochs: int = 300) -> np.ndarray:
    """Multinomial logistic regression on standardised frozen image features; test predictions."""
    classes = sorted(set(labels_train))
    index = {c: i for i, c in enumerate(classes)}
    x_train, x_test = train.image[train.image_index], test.image[test.image_index]
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-4)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    y = torch.tensor([index[c] for c in labels_train])
    torch.manual_seed(0)
    layer = torch.nn.Linear(x_train.shape[1], len(classes))
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(epochs):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(layer(x_train), y).backward()
        optimizer.step()
    with torch.no_grad():
        return np.array([classes[i] for i in layer(x_test).argmax(1).tolist()], dtype=object)


def zero_shot_table(config, encoders) -> None:
    _, _, full = features_for(config, encoders)  # all 24 pairs: for the supervised classifier
    held = config.model_copy(update={"align": config.align.model_copy(update={"holdout": HOLDOUT})})
    splits, encoders, data = features_for(held, encoders)
    classes = splits["all_captions"]["text"].tolist()
    truth = np.array(data["test"].frame["text"].tolist(), dtype=object)
    unseen = np.isin(truth, HOLDOUT)
    print(f"\n## Zero-shot on held-out colour-shape pairs ({len(HOLDOUT)} of {len(classes)} pairs left out of "
          f"alignment training: {', '.join(HOLDOUT)})\n")
    print(f"test images: {int(unseen.sum())} of held-out pairs, {int((~unseen).sum())} of seen pairs; "
          "each image is classified among all 24 caption prompts\n")
    print("| method | held-out pairs acc | seen pairs acc | train s |")
    print("|---|---|---|---|")
    print(f"| chance (1 of {len(classes)}) | {1 / len(classes):.3f} | {1 / len(classes):.3f} | - |")
    for objectives in ({"contrastive": 1.0}, {"contrastive": 1.0, "dcca": 0.5}):
        run_config = held.model_copy(update={"align": held.align.model_copy(update={"objectives": objectives})})
        model, summary = fit_aligned(run_config, encoders, data["train"], echo=lambda _: None)
        shot = zero_shot_pairs(model, data["test"], classes, set(HOLDOUT))
        print(f"| zero-shot, {name_of(objectives)} (held-out pairs never trained) | {shot['held_out_acc']:.3f} | "
              f"{shot['seen_acc']:.3f} | {summary['train_seconds']:.1f} |", flush=True)
    predicted = linear_probe(full["train"], full["test"], full["train"].frame["text"].tolist(), truth.tolist())
    correct = predicted == truth
    print(f"| supervised linear classifier, frozen image features, trained on all 24 pairs | "
          f"{correct[unseen].mean():.3f} | {correct[~unseen].mean():.3f} | - |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/easy_vqa_align.yaml")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override a.b=c")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = load_config(args.config, args.overrides)
    # Frozen encoders (a from-scratch text encoder would need its vocabulary fitted on the train
    # captions first, as train_alignment does; the packaged MiniLM needs none).
    encoders = build_align_encoders(config)
    print(f"# Alignment bench (`python bench/align.py --seeds {args.seeds}`), torch threads "
          f"{torch.get_num_threads()}")
    retrieval_table(config, encoders, args.seeds)
    zero_shot_table(config, encoders)


if __name__ == "__main__":
    main()
