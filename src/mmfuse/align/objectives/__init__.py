"""Alignment objectives, one per file, behind one registry: `create_objective("dcca", dim=...)`."""
from . import adversarial, autoencoder, contrastive, dcca  # noqa: F401  (registers them)
from .base import OBJECTIVES, AlignBatch, Objective, register_objective
from .dcca import cca_readout


def available_objectives() -> list[str]:
    return OBJECTIVES.names()


def create_objective(name: str, **options) -> Objective:
    return OBJECTIVES.create(name, **options)


__all__ = ["OBJECTIVES", "AlignBatch", "Objective", "available_objectives", "cca_readout", "create_objective",
           "register_objective"]
