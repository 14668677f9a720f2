"""MultimodalModel = encoders (one per modality) + fusion + task head."""
from __future__ import annotations

import logging
from typing import Iterable

import torch
from torch import Tensor, nn

from .config import Config
from .errors import ConfigError
from .data.batching import Batch
from .encoders import Encoder, create_encoder
from .encoders.stored import StoredFeatures
from .features import Features
from .fusion import Fusion, create_fusion
from .heads import TaskHead, create_head
from .heads.alignment import AuxiliaryAlignment
from .modalities import MODALITIES
from .tasks import create_task

log = logging.getLogger(__name__)


class FeatureScaler(nn.Module):
    """(x - mean) / std per dimension, statistics fitted once on a training set's features."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, chunks: Iterable[Tensor]) -> None:
        """Mean and (unbiased) std of pooled vectors given in chunks: a split's features need not
        be in memory at once. Sums in float64, so chunking does not cost precision."""
        count, total, squares = 0, torch.zeros_like(self.mean, dtype=torch.float64), None
        for chunk in chunks:
            chunk = chunk.double()
            count += len(chunk)
            total += chunk.sum(0)
            squares = chunk.square().sum(0) + (0 if squares is None else squares)
        if count == 0:
            return
        mean = total / count
        self.mean.copy_(mean)
        if count > 1:
            variance = ((squares - count * mean.square()) / (count - 1)).clamp_min(0)
            self.std.copy_(variance.sqrt().clamp_min(1e-6))
        else:
            self.std.fill_(1.0)

    def forward(self, feats: Features) -> Features:
        scale = lambda x: None if x is None else (x - self.mean) / self.std  # noqa: E731
        return Features(scale(feats.pooled), scale(feats.tokens), feats.mask, feats.present)


class FeatureAugment(nn.Module):
    """Training only: dropout and Gaussian noise on a modality's features (encoders.<m>.feature_dropout,
    feature_noise); the identity in eval mode. No weights: saved models are unchanged."""

    def __init__(self, dropout: float, noise: float):
        super().__init__()
        self.dropout, self.noise = dropout, noise

    def forward(self, feats: Features) -> Features:
        if not self.training:
            return feats
        def augment(x):  # noqa: E306
            if x is None:
                return None
            x = nn.functional.dropout(x, self.dropout) if self.dropout else x
            return x + self.noise * torch.randn_like(x) if self.noise else x
        return Features(augment(feats.pooled), augment(feats.tokens), feats.mask, feats.present)


class MultimodalModel(nn.Module):
    def __init__(self, encoders: dict[str, Encoder], fusion: Fusion, head: TaskHead,
                 alignment: AuxiliaryAlignment | None = None, standardize: list[str] = (),
                 augment: dict[str, tuple[float, float]] | None = None):
        super().__init__()
        self.encoders = nn.ModuleDict(encoders)
        self.scalers = nn.ModuleDict({m: FeatureScaler(encoders[m].out_dim) for m in standardize})
        self.augment = nn.ModuleDict({m: FeatureAugment(*rates) for m, rates in (augment or {}).items()})
        self.fusion = fusion
        self.head = head
        self.alignment = alignment  # an auxiliary training loss only (train.alignment)

    @property
    def modalities(self) -> list[str]:
        return list(self.encoders)

    def encode(self, batch: Batch) -> dict[str, Features]:
        feats = {}
        for modality, part in batch.modalities.items():
            encoder = self.encoders[modality]
            if part.features is not None:
                feats[modality] = part.features
            elif part.prepared is not None:
                # Run the encoder on the batch's unique inputs only, then expand to rows.
                feats[modality] = encoder(part.prepared).select(part.inverse).with_present(part.present)
            else:  # nobody in this batch has the modality
                empty = torch.zeros(batch.size, encoder.out_dim, device=part.present.device)
                feats[modality] = Features(pooled=empty, present=part.present)
        return self.scale(feats)

    def scale(self, feats: dict[str, Features]) -> dict[str, Features]:
        """Standardised features for the modalities configured so (encoders.<m>.standardize), and in
        training augmented (feature_dropout, feature_noise)."""
        scaled = {m: self.scalers[m](f) if m in self.scalers else f for m, f in feats.items()}
        return {m: self.augment[m](f) if m in self.augment else f for m, f in scaled.items()}

    def fit_scalers(self, dataset) -> None:
        """Per-dimension statistics of the frozen features of `dataset`'s unique inputs."""
        for modality, scaler in self.scalers.items():
            column = dataset.columns.get(modality)
            if column is None or column.features is None:
                raise ConfigError(f"encoders.{modality}.standardize needs a frozen encoder whose features "
                                  "are cached (set trainable: false, or standardize: false)")
            features = column.features
            scaler.fit(features.pooled_chunks() if isinstance(features, StoredFeatures) else [features.pooled])

    def forward(self, batch: Batch) -> Tensor:
        return self.head(self.fusion(self.encode(batch)))

    def objective(self) -> tuple[str, str]:
        """The validation metric that picks the epoch, and "max" or "min"."""
        return self.head.task.monitor, self.head.task.monitor_mode

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


def build_encoders(config: Config) -> dict[str, Encoder]:
    encoders = {}
    for modality in config.modalities():
        spec = getattr(config.encoders, modality)
        own = MODALITIES[modality].encoder_options(spec)  # e.g. image_size, max_tokens
        encoders[modality] = create_encoder(modality, spec.name, trainable=spec.trainable, **own, **spec.options)
    return encoders


def build_model(config: Config, num_labels: int, encoders: dict[str, Encoder] | None = None) -> MultimodalModel:
    """Encoders may be passed in already fitted (a vocabulary learned from the training texts)."""
    encoders = encoders or build_encoders(config)
    fusion = create_fusion(config.fusion.name, in_dims={m: e.out_dim for m, e in encoders.items()},
                           dim=config.fusion.dim, dropout=config.fusion.dropout, **config.fusion.options)
    head = create_head(in_dim=fusion.out_dim, num_labels=num_labels, task=create_task(config.task),
                       hidden=config.head.hidden, dropout=config.head.dropout,
                       linear=getattr(fusion, "wants_linear_head", False))
    alignment = None
    if config.train.alignment and not any(e.trainable for e in encoders.values()):
        # Its gradient reaches the encoders, never the fusion or head: with both frozen it would
        # only train its own projections.
        log.warning("train.alignment changes nothing with every encoder frozen: it shapes trainable encoders")
    if config.train.alignment:
        alignment = AuxiliaryAlignment(dims={m: e.out_dim for m, e in encoders.items()},
                                       weights=config.train.alignment, dim=config.train.alignment_dim)
    specs = {m: getattr(config.encoders, m) for m in encoders}
    standardize = [m for m, spec in specs.items() if spec.standardize]
    augment = {m: (spec.feature_dropout, spec.feature_noise) for m, spec in specs.items()
               if spec.feature_dropout or spec.feature_noise}
    return MultimodalModel(encoders, fusion, head, alignment, standardize, augment)
