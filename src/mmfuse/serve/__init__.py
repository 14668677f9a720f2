"""`mmfuse serve`: a FastAPI model server with micro-batching, metrics, auth and a web page.

Names are resolved lazily (PEP 562): the CLI reads `serve.settings` (the caps its flags offer) in
an install without the `serve` extra, where importing the app would fail on fastapi.
"""
from __future__ import annotations

import importlib

_WHERE = {"create_app": "app", "serve": "app", "ServeSettings": "settings"}

__all__ = ["ServeSettings", "create_app", "serve"]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
