"""Encoders per modality, behind one registry: `create_encoder("image", "efficientnet_lite0")`."""
from . import image, text  # noqa: F401  (registers the encoders)
from . import open_clip  # noqa: F401  (registers open_clip:<name>; imports open_clip lazily)
from . import audio, whisper  # noqa: F401  (audio encoders; whisper reads its weights lazily)
from .base import ENCODERS, Encoder, available_encoders, check_encoder_name, create_encoder, slice_prepared

__all__ = ["ENCODERS", "Encoder", "available_encoders", "check_encoder_name", "create_encoder", "slice_prepared"]
