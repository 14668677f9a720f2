"""mmfuse: multimodal (image + text + speech) learning with fusion models and cached frozen encoders.

The public names resolve on first use (PEP 562), so `import mmfuse` and `mmfuse --help` do not
pay for torch, Lightning and torchmetrics until a command actually needs them.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily
    from .config import Config, load_config
    from .errors import MmfuseError
    from .features import Features
    from .predictor import Predictor

# public name -> (module, attribute path)
_PUBLIC = {
    "Config": (".config", "Config"),
    "load_config": (".config", "load_config"),
    "MmfuseError": (".errors", "MmfuseError"),
    "Features": (".features", "Features"),
    "Predictor": (".predictor", "Predictor"),
    "load": (".predictor", "Predictor.load"),
}

__all__ = sorted(_PUBLIC)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'mmfuse' has no attribute {name!r}")
    module, attribute = _PUBLIC[name]
    value: Any = importlib.import_module(module, __name__)
    for part in attribute.split("."):
        value = getattr(value, part)
    globals()[name] = value  # resolve once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
