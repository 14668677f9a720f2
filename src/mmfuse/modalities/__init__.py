"""Modalities as plug-ins: `MODALITIES[name]` is the spec of one kind of input (see base.py)."""
# Registration order is the modalities' order everywhere (config fields, tables, reports).
from . import image  # noqa: F401,I001
from . import text  # noqa: F401
from . import audio  # noqa: F401
from .base import (MODALITIES, Decoded, EncoderSpec, Modality, available_modalities, get_modality, group_modality,
                   register_modality)

__all__ = ["MODALITIES", "Decoded", "EncoderSpec", "Modality", "available_modalities", "get_modality", "group_modality",
           "register_modality"]
