"""Fusion strategies. Importing this package registers all of them.

    from mmfuse.fusion import create_fusion, available_fusions
    fusion = create_fusion("film", in_dims={"image": 512, "text": 384}, dim=256)
"""
from . import (attention, concat, cross_attention, film, gated, late, low_rank_tensor,  # noqa: F401
               mult, product, tensor, transformer, weighted_sum)
from .base import FUSIONS, Fusion, available_fusions, create_fusion, register_fusion

__all__ = ["Fusion", "FUSIONS", "create_fusion", "available_fusions", "register_fusion"]
