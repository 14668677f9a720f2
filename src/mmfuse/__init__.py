"""mmfuse: multimodal (image + text) learning with fusion models and cached frozen encoders."""
from .config import Config, load_config
from .errors import MmfuseError
from .features import Features
from .predictor import Predictor

load = Predictor.load

__all__ = ["Config", "Features", "MmfuseError", "Predictor", "load", "load_config"]
__version__ = "0.1.0"
