"""Captioning: a decoder writes a caption for each image (mmfuse.captioning trains and evaluates it).

It does not fit the per-row head of the other tasks (a sequence per image, not one vector per
row), so it names its own runner; BLEU, ROUGE-L, CIDEr-D and factual accuracy are its metrics.
"""
from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .base import Task, register_task


@register_task("caption")
class Caption(Task):
    name = "caption"
    per_label = False
    monitor, monitor_mode = "val_cider", "max"  # or val_factual (caption.monitor)
    headline, headline_mode = "cider", "max"
    runner = "mmfuse.captioning.train:train_captioner"
    section = "caption"

    def check_config(self, config: Any) -> None:
        if config.encoders.image is None:
            raise ConfigError("task caption: encoders.image must name an image encoder")
