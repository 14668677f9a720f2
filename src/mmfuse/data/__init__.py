"""Data: reading tables, checking media, built-in data sets, splitting.

Only the light, torch-free modules are re-exported here, so `import mmfuse.data` stays cheap;
batching / dataset code is imported from its own module.
"""
from .datasets import builtin_columns, builtin_names, easy_vqa_answers, load_builtin
from .manifest import BadRow, Manifest, load_manifest, read_table, split_manifest
from .media import MediaError, check_image, clean_text, open_image

__all__ = [
    "BadRow", "Manifest", "MediaError", "builtin_columns", "builtin_names", "check_image", "clean_text",
    "easy_vqa_answers", "load_builtin", "load_manifest", "open_image", "read_table", "split_manifest",
]
