"""Text: a table cell is the text itself (stripped, NUL-free, capped at `data.max_text_chars`)."""
from __future__ import annotations

import random
from typing import Any

from pydantic import Field

from ..data.media import clean_text
from .base import EncoderSpec, Modality, is_missing, register_modality


class TextEncoderConfig(EncoderSpec):
    name: str = "minilm"  # minilm | hf:<name or path> | bow | gru | tiny_text
    max_tokens: int = Field(64, gt=0)


# ----- noises for the robustness curves --------------------------------------------------------

def token_drop(text: str, level: float, rng: random.Random) -> str:
    words = text.split()
    kept = [w for w in words if rng.random() >= level]
    return " ".join(kept) or (words[0] if words else text)  # never empty: that would be "no text"


def typo(text: str, level: float, rng: random.Random) -> str:
    """Swap each adjacent letter pair with probability `level`."""
    chars = list(text)
    i = 0
    while i < len(chars) - 1:
        if chars[i].isalpha() and chars[i + 1].isalpha() and rng.random() < level:
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
            i += 1
        i += 1
    return "".join(chars)


@register_modality
class TextModality(Modality):
    name = "text"
    default_column = "text"
    encoder_config = TextEncoderConfig
    limits = {"max_text_chars": (int, 2_000, "longest text (training cuts longer ones, the server refuses them)")}
    noises = {"token_drop": token_drop, "typo": typo}
    is_file = False
    worded = True
    help = "One text / question."

    def parse(self, cell: Any, base: str, data: Any) -> str | None:
        # A missing cell means "no text for this row"; a present but blank one is an error.
        return None if is_missing(cell) else clean_text(cell, max_chars=data.max_text_chars)

    def check(self, value: Any, data: Any) -> str | None:
        return None  # everything was checked by parse

    def load(self, values: list[Any], data: Any) -> list[str]:
        return list(values)

    def content(self, value: Any) -> bytes:
        return str(value).encode("utf-8")

    def mask_personal(self, values: list[Any], masker: Any) -> list[Any]:
        return [masker.mask(v) if isinstance(v, str) else v for v in values]

    def encoder_options(self, spec: TextEncoderConfig) -> dict[str, Any]:
        return {"max_tokens": spec.max_tokens}

    def example_file(self, folder, index: int) -> str:
        # Of several lengths, so an exported text tower keeps its length axis dynamic.
        return ("what colour is the shape in this picture", "is it a circle", "how many")[index % 3] + \
            " ?" * (index // 3)
