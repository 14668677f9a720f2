"""MultimodalModel = encoders (one per modality) + fusion + task head."""
from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from .config import Config
from .data.batching import Batch
from .encoders import Encoder, create_encoder
from .features import Features
from .fusion import Fusion, create_fusion
from .heads import TaskHead, create_head
from .heads.alignment import AuxiliaryAlignment
from .modalities import MODALITIES

log = logging.getLogger(__name__)


class MultimodalModel(nn.Module):
    def __init__(self, encoders: dict[str, Encoder], fusion: Fusion, head: TaskHead,
                 alignment: AuxiliaryAlignment | None = None):
        super().__init__()
        self.encoders = nn.ModuleDict(encoders)
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
        return feats

    def forward(self, batch: Batch) -> Tensor:
        return self.head(self.fusion(self.encode(batch)))

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
    head = create_head(in_dim=fusion.out_dim, num_labels=num_labels, task=config.task,
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
    return MultimodalModel(encoders, fusion, head, alignment)
