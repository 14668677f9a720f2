"""The Modality interface and its registry: everything mmfuse knows about one kind of input.

A modality is one file (image.py, text.py, audio.py) registered with `@register_modality`. The
config tree, the manifest checks, the feature cache, the robustness noises, the server and
`mmfuse predict` all read the registry instead of naming modalities, so adding one touches its
spec, its encoders, configs, docs and tests — nothing else.

How a table cell travels:
  parse(cell, base, data) cheap, per row: None (the row lacks the modality), a clean value (a text,
                         an absolute path), or MediaError with a reason. No decoding here.
  check(value, data)     per unique value, for rows otherwise good: the full decode with the caps
                         of `data` (read from headers before decoding); a reason or None.
  load(values, data)     decoded inputs for `encoder.prepare` (images, waveforms, texts).
  content(value)         the bytes the feature cache hashes: file content, never the file's name.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from pydantic import Field

from ..data.media import MediaError
from ..errors import ConfigError
from ..section import Section

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


@dataclass(frozen=True)
class Decoded:
    """A file its caller has already decoded and vetted (a server checks each upload that way).
    The manifest and the dataset use `value` instead of decoding again; the file stays the input's
    identity (its bytes are the feature caches' key)."""

    path: str
    value: Any = field(compare=False, repr=False)

    def __fspath__(self) -> str:
        return self.path


class EncoderSpec(Section):
    """What every modality's `encoders.<modality>` section has; a modality adds its own fields."""

    name: str
    trainable: bool | None = None  # None: from-scratch encoders train, pretrained ones stay frozen
    # Scale a frozen encoder's features to zero mean and unit variance per dimension, with
    # statistics of the training rows (fitted once, saved with the model): conditioning a fusion
    # on unscaled features whose few large dimensions carry the speaker, not the words, overfits.
    standardize: bool = False
    # Training only, on the features a frozen encoder gives (cached: the same every epoch, so a
    # fusion can learn each training input by heart): drop each dimension with this chance and add
    # Gaussian noise of this scale (in standard deviations with standardize). Measured on
    # easy_vqa_spoken, voices never heard in training: 98.07% -> 99.73% accuracy with 0.5 and 0.5.
    feature_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    feature_noise: float = Field(0.0, ge=0.0)
    options: dict[str, Any] = {}


class Modality:
    name: ClassVar[str]
    # The table column read when the config names none (None: only when a column is named).
    default_column: ClassVar[str | None] = None
    # The `encoders.<name>` section: a subclass of EncoderSpec with the default encoder's name.
    encoder_config: ClassVar[type[EncoderSpec]]
    # Caps in the `data` section, read before decoding: field name -> (type, default, meaning).
    limits: ClassVar[dict[str, tuple[type, Any, str]]] = {}
    # Noises for the robustness curves: name -> f(decoded value, level in [0, 1], random.Random).
    noises: ClassVar[dict[str, Callable]] = {}
    # A file modality's cells are paths (and it arrives at the server as bytes: base64 in JSON, a
    # file in multipart); otherwise a cell is the value itself (text).
    is_file: ClassVar[bool] = True
    formats: ClassVar[tuple[str, ...]] = ()  # file formats an upload may be in (server /info)
    help: ClassVar[str] = ""  # one line for `mmfuse predict --<name>` and the server schema

    # -- table cells --------------------------------------------------------------------------

    def parse(self, cell: Any, base: str, data: Any) -> Any | None:
        """A file modality's default: an absolute path (relative to the table's folder), or None."""
        if isinstance(cell, Decoded):
            return cell
        if is_missing(cell):
            return None
        text = (os.fspath(cell) if isinstance(cell, os.PathLike) else str(cell)).strip()
        if not text:
            return None
        if "\0" in text:  # no file has such a name; the operating system refuses it outright
            raise MediaError("the path contains a NUL byte")
        if _URL.match(text):
            raise MediaError(f"URLs are not supported: download the {self.name} files and point at local files")
        # Relative paths are relative to the table file, not the working directory, so a data
        # folder can be moved or run from anywhere.
        path = os.path.abspath(os.path.join(base, os.path.expanduser(text)))
        if getattr(data, "confine_paths", False):
            # Symlinks resolved: a link inside the folder that points out of it is outside.
            real, folder = os.path.realpath(path), os.path.realpath(base)
            if os.path.commonpath([real, folder]) != folder:
                raise MediaError(f"path outside the table's folder (data.confine_paths): {text!r}")
            return real  # the checked file, not a name a link swapped later could redirect
        return path

    def check(self, value: Any, data: Any) -> str | None:
        """The reason `value` cannot be used, or None (file modalities decode it fully once)."""
        try:
            if isinstance(value, Decoded):
                self.check_decoded(value.value, data)
            else:
                self.decode(value, data)
        except MediaError as error:
            return str(error)
        return None

    def check_decoded(self, decoded: Any, data: Any) -> None:
        """Caps that still apply to an input its caller decoded already (raise MediaError)."""

    def decode(self, value: Any, data: Any) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def load(self, values: list[Any], data: Any) -> list[Any]:
        """Decoded inputs for `encoder.prepare` (a pre-decoded file is not decoded again)."""
        return [v.value if isinstance(v, Decoded) else self.decode(v, data) for v in values]

    def content(self, value: Any) -> bytes:
        """The bytes behind the feature-cache key: a file's content (a renamed copy is the same input)."""
        return Path(value).read_bytes()

    # Tokens laid out on a square grid over the input (image regions): explain draws them as a heatmap.
    spatial: ClassVar[bool] = False
    # Values made of words (free text): explain attributes the prediction to each word.
    worded: ClassVar[bool] = False

    def mask_personal(self, values: list[Any], masker: Any) -> list[Any]:
        """The column with personal data masked (`privacy.mask_pii`); only free text has any here."""
        return values

    # -- elsewhere ----------------------------------------------------------------------------

    def encoder_options(self, spec: EncoderSpec) -> dict[str, Any]:
        """Keyword arguments of `create_encoder` from the modality's own encoder fields."""
        return {}

    def example_file(self, folder: Path, index: int) -> Path | str:  # pragma: no cover - interface
        """A small valid input (a file in `folder` for file modalities) for tests and export."""
        raise NotImplementedError

    def from_upload(self, data: bytes, field: str, folder: Path, limits: dict[str, Any]) -> Decoded:
        """Vet uploaded bytes fully, store them in `folder`; MediaError with a reason if bad."""
        raise NotImplementedError  # pragma: no cover - text overrides parse instead


def is_missing(value: Any) -> bool:
    """An empty table cell (None, NaN, pandas NA): the row lacks the modality / value."""
    if value is None:
        return True
    if isinstance(value, (list, tuple, dict)) or type(value).__name__ == "ndarray":
        return False
    import pandas as pd  # already imported by whoever reads tables; kept out of start-up

    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


MODALITIES: dict[str, Modality] = {}


def register_modality(cls: type[Modality]) -> type[Modality]:
    if cls.name in MODALITIES:
        raise ValueError(f"modality {cls.name!r} is registered twice")
    MODALITIES[cls.name] = cls()
    return cls


def get_modality(name: str) -> Modality:
    if name not in MODALITIES:
        raise ConfigError(f"unknown modality {name!r}; available: {', '.join(available_modalities())}")
    return MODALITIES[name]


def group_modality(frame: Any) -> str | None:
    """The modality whose file groups rows (several questions on one image): the first registered
    file modality that `frame` (a manifest frame or a dict of columns) has values for."""
    for name, modality in MODALITIES.items():
        if modality.is_file and name in frame and any(v is not None for v in frame[name]):
            return name
    return None


def available_modalities() -> list[str]:
    return list(MODALITIES)
