"""Data: reading tables, checking media, built-in data sets, splitting.

Names are resolved lazily (PEP 562), so importing one submodule (the modality specs import
`data.media`) never drags in the manifest, which imports the config tree.
"""
from __future__ import annotations

import importlib

_WHERE = {
    "builtin_columns": "datasets", "builtin_names": "datasets", "easy_vqa_answers": "datasets",
    "load_builtin": "datasets",
    "BadRow": "manifest", "Manifest": "manifest", "load_manifest": "manifest", "read_table": "manifest",
    "split_manifest": "manifest",
    "MediaError": "media", "check_image": "media", "clean_text": "media", "open_image": "media",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
