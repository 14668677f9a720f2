"""Learning from few labels: pseudo-labels on unlabelled training rows (FixMatch, FlexMatch,
FreeMatch, as USB implements them).

A training row with an empty label is unlabelled (config `semi_supervised`). Each step takes a
labelled batch and `ratio` times as many unlabelled rows. The model's prediction on the weak view
(the row as is) gives a pseudo-label; where its confidence clears the threshold, the prediction on
a strong view (a modality dropped; a trainable image encoder's pixels jittered) is trained towards
it with cross-entropy, weighted by `unlabelled_weight`:

    loss = CE(labelled) + lambda_u * mean_over_unlabelled(mask * CE(strong logits, weak argmax))

Thresholds: FixMatch's fixed tau; FreeMatch's self-adaptive one, tau_t(c) = EMA of the mean max
confidence x (EMA of class c's mean probability / the largest such mean); FlexMatch's curriculum,
tau(c) = tau * beta_c / (2 - beta_c), beta_c = rows whose confident pseudo-label is c / the largest
such count (or the rows not yet confident, while they are more). FreeMatch's fairness term is left out.

train.py calls `make_paired_loader` and `PseudoLabelling`; the Predictor calls `partition`,
`drop_unlabelled` and `truth_targets`.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from .config import Config, SemiSupervisedConfig
from .data.batching import Batch, GroupBatchSampler, TableDataset, identity
from .errors import DataError, MmfuseError
from .image_augment import augment_batch

log = logging.getLogger(__name__)

UNKNOWN = -1  # an unlabelled row whose truth is not given: left out of the pseudo-label accuracy
UNSEEN = -100  # its truth is a label the labelled rows lack: no pseudo-label can be right


def section(config: Config) -> SemiSupervisedConfig | None:
    """The semi_supervised section when it is on, else None."""
    semi = config.semi_supervised
    return semi if semi is not None and semi.enabled else None


# ----- rows -----------------------------------------------------------------------------------

def partition(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(labelled rows, unlabelled rows) of a training manifest frame, counted in the log."""
    unlabelled = frame["label"].isna()
    labelled_rows, unlabelled_rows = frame[~unlabelled], frame[unlabelled]
    log.info("semi_supervised: %d labelled, %d unlabelled training rows", len(labelled_rows), len(unlabelled_rows))
    if not len(labelled_rows):
        raise MmfuseError("semi_supervised: every training row is unlabelled; label some rows (pseudo-labels "
                          "start from a model trained on labelled ones)")
    return labelled_rows.reset_index(drop=True), unlabelled_rows.reset_index(drop=True)


def drop_unlabelled(parts: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Validation and test rows must be labelled to score anything: unlabelled ones are dropped, counted."""
    for name in ("val", "test"):
        frame = parts.get(name)
        if frame is not None and frame["label"].isna().any():
            gone = int(frame["label"].isna().sum())
            log.warning("semi_supervised: %d unlabelled %s row(s) dropped (%s rows must be labelled)", gone, name, name)
            parts[name] = frame[frame["label"].notna()].reset_index(drop=True)
    return parts


def truth_targets(source: Any, column: str, rows: pd.Series, labels: list[str]) -> Tensor:
    """The hidden true label of unlabelled rows (1-based `rows` of `source`, a DataFrame, table
    path or built-in name) as label positions: UNKNOWN where the cell is empty, UNSEEN where the
    label is not among `labels`. Never trained on; only the pseudo-label accuracy reads it."""
    from .data.source_column import source_column
    from .modalities.base import is_missing
    from .tasks.base import label_text

    position = {label: i for i, label in enumerate(labels)}
    cells = source_column(source, column, rows, "semi_supervised.truth_column")
    return torch.tensor([UNKNOWN if is_missing(v) or not label_text(v) else position.get(label_text(v), UNSEEN)
                         for v in cells], dtype=torch.long)


# ----- batches: a labelled batch and `ratio` times as many unlabelled rows per step --------------

@dataclass
class PairedBatch:
    labelled: Batch
    unlabelled: Batch


class PairedDataset(Dataset):
    def __init__(self, labelled: TableDataset, unlabelled: TableDataset):
        self.labelled, self.unlabelled = labelled, unlabelled

    def __len__(self) -> int:
        return len(self.labelled) + len(self.unlabelled)

    def __getitem__(self, pair: tuple[list[int], list[int]]) -> PairedBatch:
        return PairedBatch(self.labelled[pair[0]], self.unlabelled[pair[1]])


class PairedSampler(Sampler):
    """An epoch is one pass over the larger side (usually the unlabelled rows); the other side is
    cycled. The orders depend only on (seed, epoch, pass), so a resumed run repeats its batches."""

    PASSES = 1_000_003  # distinct, deterministic orders for each pass within an epoch

    def __init__(self, labelled: GroupBatchSampler, unlabelled: GroupBatchSampler):
        self.sides = (labelled, unlabelled)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return max(len(side) for side in self.sides)

    def _cycle(self, sampler: GroupBatchSampler) -> Iterator[list[int]]:
        for turn in itertools.count():
            sampler.set_epoch(self.epoch * self.PASSES + turn)
            yield from iter(sampler)

    def __iter__(self) -> Iterator[tuple[list[int], list[int]]]:
        steps = len(self)
        return iter(zip(itertools.islice(self._cycle(self.sides[0]), steps),
                        itertools.islice(self._cycle(self.sides[1]), steps)))


def make_paired_loader(labelled: TableDataset, unlabelled: TableDataset, config: Config) -> DataLoader:
    """batch_size groups (images, or rows) labelled and ratio x batch_size unlabelled per step."""
    train, ratio = config.train, config.semi_supervised.ratio
    sides = [GroupBatchSampler(data.groups, size, shuffle=True, seed=train.seed + offset, rank=None, world=None)
             for data, size, offset in ((labelled, train.batch_size, 0), (unlabelled, train.batch_size * ratio, 1))]
    return DataLoader(PairedDataset(labelled, unlabelled), sampler=PairedSampler(*sides), batch_size=None,
                      collate_fn=identity, num_workers=train.num_workers, persistent_workers=train.num_workers > 0)


# ----- thresholds ------------------------------------------------------------------------------

class FixedThreshold(nn.Module):
    """FixMatch: a pseudo-label counts where the weak view's largest probability is >= tau."""

    def __init__(self, tau: float, num_classes: int):
        super().__init__()
        self.tau, self.num_classes = tau, num_classes

    def per_class(self) -> Tensor:
        return torch.full((self.num_classes,), self.tau)

    def mask(self, probs: Tensor, rows: Tensor) -> Tensor:
        return probs.max(-1).values >= self.tau


class FreeMatchThreshold(FixedThreshold):
    """FreeMatch (Wang et al. 2023): global tau_t = EMA of the batches' mean max probability,
    scaled per class by the EMA of its mean probability over the largest one. Both start at
    1/classes and are updated with each batch before it is masked (as USB does)."""

    def __init__(self, num_classes: int, momentum: float):
        super().__init__(1.0 / num_classes, num_classes)
        self.momentum = momentum
        self.register_buffer("global_threshold", torch.tensor(1.0 / num_classes))
        self.register_buffer("class_mean", torch.full((num_classes,), 1.0 / num_classes))

    @torch.no_grad()
    def update(self, probs: Tensor) -> None:
        step = 1 - self.momentum  # an EMA: lerp_ moves each running value this far towards the batch's
        self.global_threshold.lerp_(probs.max(-1).values.mean(), step)
        self.class_mean.lerp_(probs.mean(0), step)

    def per_class(self) -> Tensor:
        return self.global_threshold * self.class_mean / self.class_mean.max()

    def mask(self, probs: Tensor, rows: Tensor) -> Tensor:
        self.update(probs)
        confidence, guess = probs.max(-1)
        return confidence >= self.per_class()[guess]


class FlexMatchThreshold(FixedThreshold):
    """FlexMatch (Zhang et al. 2021): each unlabelled row remembers its last pseudo-label that
    cleared tau; beta_c = rows remembered as c / max(the largest class count, rows with none yet)
    (USB's threshold warm-up), and class c's threshold is tau * beta_c / (2 - beta_c): low for
    classes the model rarely claims yet, tau for the best-learnt one."""

    def __init__(self, tau: float, num_classes: int, rows: int):
        super().__init__(tau, num_classes)
        self.register_buffer("selected", torch.full((rows,), -1, dtype=torch.long))
        self.register_buffer("learning", torch.zeros(num_classes))  # beta_c

    def per_class(self) -> Tensor:
        return self.tau * self.learning / (2.0 - self.learning)

    @torch.no_grad()
    def update(self) -> None:
        counts = torch.bincount(self.selected + 1, minlength=self.num_classes + 1)  # [none yet, class 0, ...]
        if counts[0] < len(self.selected):  # some row has a confident pseudo-label
            self.learning.copy_(counts[1:].float() / counts.max())

    def mask(self, probs: Tensor, rows: Tensor) -> Tensor:
        confidence, guess = probs.max(-1)
        mask = confidence >= self.per_class()[guess]
        confident = confidence >= self.tau
        self.selected[rows[confident]] = guess[confident]
        self.update()
        return mask


def ema_momentum(semi: SemiSupervisedConfig, steps_per_epoch: int) -> float:
    """semi.ema, or 1 - 1/(steps per epoch) within [0.9, 0.999]: USB's 0.999 assumes a million
    steps, over a few hundred an EMA would barely leave its start."""
    return semi.ema if semi.ema is not None else min(0.999, max(0.9, 1 - 1 / max(1, steps_per_epoch)))


def create_threshold(semi: SemiSupervisedConfig, num_classes: int, rows: int, steps_per_epoch: int) -> FixedThreshold:
    if semi.adaptive == "freematch":
        return FreeMatchThreshold(num_classes, ema_momentum(semi, steps_per_epoch))
    if semi.adaptive == "flexmatch":
        return FlexMatchThreshold(semi.threshold, num_classes, rows)
    return FixedThreshold(semi.threshold, num_classes)


class DistributionAlignment(nn.Module):
    """ReMixMatch's distribution alignment (USB's DistAlignEMAHook with the labelled rows' class
    frequencies as target): the weak view's probabilities times (labelled frequency / the EMA of the
    model's mean prediction on unlabelled rows), renormalised. A model that claims one class too
    often (a count of 1 where it is 2) has its pseudo-labels pulled back towards the labelled share."""

    def __init__(self, labelled_targets: Tensor, num_classes: int, momentum: float):
        super().__init__()
        counts = torch.bincount(labelled_targets.long().flatten(), minlength=num_classes).float()
        # A class no labelled row has keeps a small share, so it can still be claimed.
        self.register_buffer("target", (counts + 1.0) / (counts + 1.0).sum())
        self.register_buffer("model_mean", torch.full((num_classes,), 1.0 / num_classes))
        self.momentum = momentum

    @torch.no_grad()
    def forward(self, probs: Tensor) -> Tensor:
        self.model_mean.lerp_(probs.mean(0), 1 - self.momentum)  # an EMA, as FreeMatchThreshold's
        aligned = probs * (self.target / self.model_mean.clamp_min(1e-6))
        return aligned / aligned.sum(-1, keepdim=True)


def pseudo_label_loss(strong_logits: Tensor, pseudo_labels: Tensor, mask: Tensor) -> Tensor:
    """Cross-entropy of the strong view against the pseudo-labels, zero where masked out, averaged
    over every unlabelled row (USB's consistency loss: fewer confident rows, a smaller loss)."""
    per_row = F.cross_entropy(strong_logits, pseudo_labels, reduction="none")
    return (per_row * mask.to(per_row.dtype)).mean()


# ----- the strong view -------------------------------------------------------------------------

def strong_view(batch: Batch, semi: SemiSupervisedConfig) -> Batch:
    """Modality dropout (on cached features too), feature dropout on cached features and, where a
    batch carries pixels for a trainable image encoder, augmented pixels."""
    from .train import drop_modalities  # train.py imports this module

    if semi.modality_dropout and len(batch.modalities) > 1:
        batch = drop_modalities(batch, {m: semi.modality_dropout for m in batch.modalities})
    if semi.feature_dropout:
        drop = lambda x: None if x is None else F.dropout(x, semi.feature_dropout, training=True)  # noqa: E731
        parts = {m: replace(p, features=replace(p.features, pooled=drop(p.features.pooled), tokens=drop(p.features.tokens)))
                 if p.features is not None else p for m, p in batch.modalities.items()}
        batch = replace(batch, modalities=parts)
    if semi.image_augment:
        batch = augment_batch(batch, "strong")
    return batch


# ----- the objective and what it reports -----------------------------------------------------

class PseudoLabelling(nn.Module):
    """The unlabelled part of a training step, and per-epoch figures: the threshold (mean over
    classes), the mask rate (share of unlabelled rows above it), the accuracy of the pseudo-labels
    that counted and of all of them (rows whose truth was given: semi_supervised.truth_column)."""

    TALLY = ("seen", "masked", "known", "right", "known_masked", "right_masked")

    def __init__(self, semi: SemiSupervisedConfig, *, num_classes: int, rows: int, steps_per_epoch: int,
                 truth: Tensor | None = None, weak_augment: bool = False,
                 labelled_targets: Tensor | None = None):
        super().__init__()
        self.semi = semi
        self.align = None
        if semi.distribution_alignment:
            if labelled_targets is None:
                raise MmfuseError("semi_supervised.distribution_alignment needs the labelled rows' targets")
            self.align = DistributionAlignment(labelled_targets, num_classes, ema_momentum(semi, steps_per_epoch))
        self.weak_augment = weak_augment  # train.image_augment: the weak view is weakly augmented too
        self.threshold = create_threshold(semi, num_classes, rows, steps_per_epoch)
        self.register_buffer("truth", truth if truth is not None else torch.full((rows,), UNKNOWN), persistent=False)
        self.tally = torch.zeros(len(self.TALLY), dtype=torch.float64)
        self.history: list[dict[str, Any]] = []

    def warming_up(self, epoch: int) -> bool:
        return epoch < self.semi.warmup_epochs

    def loss(self, model: nn.Module, batch: Batch, epoch: int) -> Tensor | None:
        """lambda_u x the masked pseudo-label loss of `batch` (unlabelled rows); None in warm-up.
        The weak view is scored (and thresholds updated) in warm-up too, so its figures show."""
        with torch.no_grad():
            weak = augment_batch(batch, "weak") if self.weak_augment else batch
            probs = model.head.scores(model(weak)).float()
            if self.align is not None:
                probs = self.align(probs)
        mask = self.threshold.mask(probs, batch.rows)
        pseudo = probs.argmax(-1)
        self.count(pseudo, mask, self.truth[batch.rows])
        if self.warming_up(epoch) or not self.semi.unlabelled_weight:
            return None
        strong = strong_view(batch, self.semi)
        logits = model.head(model.fusion(model.encode(strong)))
        return self.semi.unlabelled_weight * pseudo_label_loss(logits, pseudo, mask)

    def count(self, pseudo: Tensor, mask: Tensor, truth: Tensor) -> None:
        known, right = truth != UNKNOWN, pseudo == truth
        counts = [torch.ones_like(mask), mask, known, right & known, known & mask, right & known & mask]
        self.tally += torch.stack([c.sum() for c in counts]).double().cpu()

    def end_epoch(self, epoch: int, reduce=None) -> dict[str, Any]:
        """The epoch's figures (tallies summed over DDP processes by `reduce`), kept in `history`."""
        tally = reduce(self.tally) if reduce is not None else self.tally
        seen, masked, known, right, known_masked, right_masked = tally.tolist()
        share = lambda a, b: a / b if b else None  # noqa: E731
        figures = {"epoch": epoch + 1, "warmup": self.warming_up(epoch),
                   "threshold": float(self.threshold.per_class().mean()),
                   "mask_rate": share(masked, seen),
                   "pseudo_label_accuracy": share(right_masked, known_masked),
                   "pseudo_label_accuracy_all": share(right, known)}
        self.history.append(figures)
        self.tally.zero_()
        return figures

    def summary(self, labelled: int) -> dict[str, Any]:
        return {"labelled": labelled, "unlabelled": len(self.truth), "adaptive": self.semi.adaptive,
                "epochs": list(self.history)}


def describe(figures: dict[str, Any]) -> str:
    """One log line of an epoch's figures."""
    text = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    return (f"pseudo-labels epoch {figures['epoch']}{' (warm-up)' if figures['warmup'] else ''}: threshold "
            f"{figures['threshold']:.4f}, mask rate {text(figures['mask_rate'])}, accuracy of those used "
            f"{text(figures['pseudo_label_accuracy'])}, of all {text(figures['pseudo_label_accuracy_all'])}")
