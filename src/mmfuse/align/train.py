"""Training an AlignedModel: projection heads over cached frozen encoder features.

The heads train in mmfuse.train's Lightning loop (`fit_briefly`: no checkpoints or loggers, as an
epoch over a few thousand cached vectors takes milliseconds); the losses are logged to
TensorBoard after training. Fine-tuning the towers is not supported here (a ConfigError says so).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..config import AlignConfig, Config, DataConfig
from ..data.manifest import split_manifest
from ..dataset import loader
from ..encoders import Encoder
from ..encoders.cache import FeatureCache
from ..errors import ConfigError, DataError
from .captions import load_captions
from .model import AlignedModel, build_align_encoders
from .objectives import AlignBatch, Objective, cca_readout, create_objective, available_objectives
from .retrieval import pair_retrieval_metrics
from .zero_shot import held_out_accuracy, nearest_label

log = logging.getLogger(__name__)


@dataclass
class PairFeatures:
    """Cached pooled features of one split's unique images and captions, and its pairs."""

    frame: pd.DataFrame  # the split's rows (image, text, ...)
    image: Tensor  # (n_unique_images, Di)
    text: Tensor  # (n_unique_texts, Dt)
    image_index: Tensor  # (n_pairs,) row of `image` for each pair
    text_index: Tensor  # (n_pairs,)

    def __len__(self) -> int:
        return len(self.image_index)


@dataclass
class AlignmentRun:
    model: AlignedModel
    summary: dict[str, Any] = field(default_factory=dict)  # train_seconds, losses, test metrics, ...
    splits: dict[str, pd.DataFrame] = field(default_factory=dict)


def pair_features(frame: pd.DataFrame, encoders: dict[str, Encoder], cache: FeatureCache,
                  data) -> PairFeatures:
    indices, tensors = {}, {}
    for modality in ("image", "text"):
        load = loader(modality, data)
        values = frame[modality].tolist()
        unique = list(dict.fromkeys(values))
        position = {v: i for i, v in enumerate(unique)}
        tensors[modality] = cache.features(encoders[modality], unique, load).pooled.float()
        indices[modality] = torch.tensor([position[v] for v in values], dtype=torch.long)
    return PairFeatures(frame, tensors["image"], tensors["text"], indices["image"], indices["text"])


def build_objectives(align: AlignConfig, dims: dict[str, int]) -> dict[str, Objective]:
    unknown = [name for name in align.options if name not in align.objectives]
    if unknown:
        raise ConfigError(f"align.options: {', '.join(unknown)} is not in align.objectives "
                          f"({', '.join(align.objectives)})")
    if not align.objectives:
        raise ConfigError(f"align.objectives is empty; choose from {', '.join(available_objectives())}")
    built = {}
    for name in align.objectives:
        try:
            built[name] = create_objective(name, dim=align.dim, image_dim=dims["image"], text_dim=dims["text"],
                                           **align.options.get(name, {}))
        except TypeError as error:
            raise ConfigError(f"align.options.{name}: {error}") from None
    return built


def make_batch(model: AlignedModel, data: PairFeatures, rows: Tensor) -> AlignBatch:
    return batch_of_pairs(model.heads, data, rows)


def batch_of_pairs(heads: nn.ModuleDict, data: PairFeatures, rows: Tensor) -> AlignBatch:
    image_id, text_id = data.image_index[rows], data.text_index[rows]
    image_in = heads["image"].standardise(data.image[image_id])
    text_in = heads["text"].standardise(data.text[text_id])
    positives = (image_id[:, None] == image_id[None, :]) | (text_id[:, None] == text_id[None, :])
    return AlignBatch(image_in, text_in, heads["image"](image_in), heads["text"](text_in), positives)


def fit_standardisation(model: AlignedModel, data: PairFeatures) -> None:
    for modality, features in (("image", data.image), ("text", data.text)):
        head = model.heads[modality]
        head.in_mean.copy_(features.mean(0))
        # A feature constant over the training set (or a single caption) must not divide by 0.
        head.in_std.copy_(features.std(0, unbiased=False).clamp_min(1e-4) if len(features) > 1
                          else torch.ones_like(features[0]))


def fit_heads(model: AlignedModel, objectives: dict[str, Objective], weights: dict[str, float],
              data: PairFeatures, align: AlignConfig, echo: Callable[[str], None] = log.info) -> list[float]:
    """AdamW + cosine decay over shuffled pairs; returns the mean loss of each epoch."""
    from ..train import fit_briefly  # Lightning: only when aligning
    from .fit import AlignTraining, ShuffledPairs

    sampler = ShuffledPairs(len(data), min(align.batch_size, len(data)), align.seed)
    loader = DataLoader(range(len(data)), batch_sampler=sampler, collate_fn=torch.tensor)
    module = AlignTraining(model.heads, objectives, weights, data, align, len(sampler), echo)
    fit_briefly(module, loader, align.epochs)
    model.eval()
    return module.history


def wants_cca(align: AlignConfig, objectives: dict[str, Objective]) -> bool:
    if align.readout == "auto":
        return not any(o.cosine_space for o in objectives.values())
    return align.readout == "cca"


@torch.no_grad()
def fit_readout(model: AlignedModel, data: PairFeatures) -> None:
    """Linear CCA on the training pairs' projections, kept as each head's fixed read-out."""
    image = model.heads["image"](model.heads["image"].standardise(data.image))[data.image_index]
    text = model.heads["text"](model.heads["text"].standardise(data.text))[data.text_index]
    fitted = cca_readout(image.double(), text.double())
    for modality in ("image", "text"):
        model.heads[modality].out_mean.copy_(fitted[f"{modality}_mean"].float())
        model.heads[modality].out_matrix.copy_(fitted[f"{modality}_matrix"].float())


@torch.no_grad()
def embed_pairs(model: AlignedModel, data: PairFeatures) -> tuple[np.ndarray, np.ndarray]:
    """(pair image vectors, pair text vectors), both (n_pairs, dim)."""
    image = model.embed_features("image", data.image)[data.image_index]
    text = model.embed_features("text", data.text)[data.text_index]
    return image.numpy(), text.numpy()


def evaluate_pairs(model: AlignedModel, data: PairFeatures) -> dict[str, float]:
    image, text = embed_pairs(model, data)
    return pair_retrieval_metrics(image, text, data.frame["image"].tolist(), data.frame["text"].tolist())


def zero_shot_pairs(model: AlignedModel, data: PairFeatures, classes: list[str], held_out: set[str]) -> dict[str, float]:
    """Each test image against every distinct caption as a prompt (captions are the labels)."""
    prompt_vectors = model.embed_texts(classes)
    image, _ = embed_pairs(model, data)
    predicted, _ = nearest_label(image, prompt_vectors, classes)
    return held_out_accuracy(predicted, data.frame["text"].tolist(), held_out, len(classes))


def load_splits(config: Config, align: AlignConfig) -> dict[str, pd.DataFrame]:
    manifest = load_captions(align.captions, image_root=align.image_root, data=config.data)
    if manifest.bad_rows:
        log.warning("%s", manifest.summary())
        for bad in manifest.bad_rows[:20]:
            log.warning("  %s", bad)
    split_cfg = DataConfig(val_fraction=align.val_fraction, test_fraction=align.test_fraction,
                           split_seed=align.seed)
    parts = split_manifest(manifest, split_cfg)
    held_out = set(align.holdout)
    unknown = held_out - set(manifest.frame["text"])
    if unknown:
        raise ConfigError(f"align.holdout: {sorted(unknown)} is not a caption of {align.captions}")
    for name in ("train", "val"):
        parts[name] = parts[name][~parts[name]["text"].isin(held_out)].reset_index(drop=True)
    if len(parts["train"]) < 2:
        raise DataError(f"{align.captions}: fewer than 2 training pairs left to align")
    parts["all_captions"] = pd.DataFrame({"text": list(dict.fromkeys(manifest.frame["text"]))})
    return parts


def fit_aligned(config: Config, encoders: dict[str, Encoder], train: PairFeatures,
                echo: Callable[[str], None] = log.info) -> tuple[AlignedModel, dict[str, Any]]:
    """A fresh AlignedModel over `encoders`, its heads trained on `train` (cached features)."""
    align = config.align
    torch.manual_seed(align.seed)
    model = AlignedModel(config, encoders)
    fit_standardisation(model, train)
    objectives = build_objectives(align, {"image": train.image.shape[1], "text": train.text.shape[1]})
    start = time.perf_counter()
    losses = fit_heads(model, objectives, align.objectives, train, align, echo)
    if wants_cca(align, objectives):
        fit_readout(model, train)
    return model, {"train_seconds": time.perf_counter() - start, "epochs": align.epochs,
                   "train_pairs": len(train), "losses": losses}


def train_alignment(config: Config, *, echo: Callable[[str], None] = log.info) -> AlignmentRun:
    """Train an AlignedModel on config.align.captions; evaluate retrieval (and zero-shot on the
    held-out captions, if any) on the test split."""
    align = config.align or AlignConfig()
    config = config.model_copy(update={"align": align})
    splits = load_splits(config, align)
    encoders = build_align_encoders(config)
    encoders["text"].fit(splits["train"]["text"].tolist())  # a vocabulary, for from-scratch text encoders
    encoders["text"].set_trainable(False)
    cache = FeatureCache(config.cache_dir)
    train = pair_features(splits["train"], encoders, cache, config.data)
    model, summary = fit_aligned(config, encoders, train, echo)
    for name in ("val", "test"):
        if len(splits[name]):
            data = pair_features(splits[name], encoders, cache, config.data)
            summary[f"{name}_metrics"] = evaluate_pairs(model, data)
            summary[f"{name}_pairs"] = len(data)
            if name == "test" and align.holdout:
                summary["zero_shot"] = zero_shot_pairs(model, data, splits["all_captions"]["text"].tolist(),
                                                       set(align.holdout))
    summary["tensorboard"] = log_to_tensorboard(config, summary)
    return AlignmentRun(model, summary, splits)


def log_to_tensorboard(config: Config, summary: dict[str, Any]) -> str:
    """The run's losses per epoch and its retrieval metrics, into RUN/logs/version_N (as `mmfuse
    train` logs); written after training: an epoch takes milliseconds, so no one watches it live."""
    from ..train import tensorboard_logger  # Lightning: only when aligning

    logger = tensorboard_logger(config.output_dir, config)
    for epoch, loss in enumerate(summary["losses"]):
        logger.log_metrics({"train_loss": loss}, step=epoch)
    for part, prefix in (("val_metrics", "val_"), ("test_metrics", "test_"), ("zero_shot", "zero_shot_")):
        metrics = {prefix + key: value for key, value in summary.get(part, {}).items()}
        logger.log_metrics(metrics, step=len(summary["losses"]) - 1)
    logger.finalize("success")
    return logger.log_dir
