"""Untrusted request values -> model inputs, or an ApiError naming the field.

Generic over the modality registry: a file modality's bytes (an upload or base64) go to its
spec's `from_upload`, which vets them fully with this server's caps (cheapest check first, sizes
read from headers before any decoding), stores them in the per-server temp folder (the file is
the input's identity for the feature caches; the caller deletes it after the request) and hands
them on decoded (`Decoded`), so the Predictor does not decode them again. A string modality
(text) goes through its spec's `parse`. A refusal (`MediaError`) becomes a 422 naming the field
(or the status the error carries, e.g. 415 for an image format outside the allowlist).

A request's images are also capped together (`check_request_pixels`), from their headers before
any is decoded: a file modality that decodes to pixels offers `decoded_pixels(data, limits)`.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ..data.media import MediaError
from ..modalities import MODALITIES, Decoded, Modality
from ..privacy import PiiMasker
from .errors import ApiError, invalid

# ASCII only, as the OpenAPI schema's pattern spells it (serve/openapi.py).
_DATA_URL = re.compile(r"^data:[A-Za-z0-9_/+.-]*;base64,", re.IGNORECASE | re.ASCII)


@dataclass
class ModelRow:
    """One validated row: modality -> its value (a `Decoded` file, or a clean text); absent
    modalities have no key."""

    values: dict[str, Any] = field(default_factory=dict)
    # File modality -> digest of the uploaded bytes: two requests of one batch that send the same
    # file are one input to the model (encoded once), as rows of a table naming one file are.
    digests: dict[str, bytes] = field(default_factory=dict)
    # Explain the row too (serve/explanations.py) unless time.monotonic() is past this, its
    # request's deadline; None: predict only.
    explain_until: float | None = None

    def get(self, modality: str) -> Any | None:
        return self.values.get(modality)

    def without(self, modality: str) -> "ModelRow":
        return ModelRow({name: value for name, value in self.values.items() if name != modality},
                        {name: value for name, value in self.digests.items() if name != modality})


def decode_base64(value: str, field: str, modality: str = "file") -> bytes:
    """Plain base64 or a data URL (`data:image/png;base64,...`)."""
    payload = _DATA_URL.sub("", value.strip(), count=1)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(field, f"not valid base64 (expected the {modality} bytes, base64-encoded)") from None


def check_string(modality: Modality, value: str, field: str, limits: dict[str, Any]) -> Any:
    """A string modality's value, cleaned by its spec; refused (not cut) when over a `max_*_chars` cap."""
    for name, cap in limits.items():
        # A model would cut an overlong cell; a server refuses it, so nobody is answered about
        # a text it did not read in full. The string as sent is counted (as the OpenAPI
        # schema's maxLength counts it), surrounding blanks included.
        if name in modality.limits and name.endswith("_chars") and len(value) > cap:
            raise invalid(field, f"{modality.name} too long: {len(value):,} characters (max {cap:,})")
    try:
        return modality.parse(value, "", SimpleNamespace(**limits))
    except MediaError as error:
        raise invalid(field, f"{error} (leave the field out to predict without {modality.name})") from None


def save_upload(modality: Modality, data: bytes, field: str, *, limits: dict[str, Any], folder: Path) -> Decoded:
    """Vet a file modality's bytes fully and store them; the caller deletes the file (`discard`)."""
    try:
        return modality.from_upload(data, field, folder, limits)
    except MediaError as error:
        raise invalid(field, str(error), status=getattr(error, "status", 422)) from None


def make_row(values: dict[str, bytes | str], *, where: str, limits: dict[str, Any], folder: Path) -> ModelRow:
    """Raw values (bytes for file modalities, strings otherwise) -> a validated ModelRow."""
    row = ModelRow()
    try:
        # Strings first (cheap), then files, each in registration order.
        for name, modality in sorted(MODALITIES.items(), key=lambda item: item[1].is_file):
            if values.get(name) is None:
                continue
            field = f"{where}{name}"
            if modality.is_file:
                row.values[name] = save_upload(modality, values[name], field, limits=limits, folder=folder)
                row.digests[name] = hashlib.blake2b(values[name], digest_size=16).digest()
            else:
                row.values[name] = check_string(modality, values[name], field, limits)
                if limits.get("mask_pii"):  # before the model, the feature LRU, a log line or an error
                    # With the model's masker (as its texts were masked in training, Presidio
                    # included: limits["masker"], built once per model), else the default recognizers.
                    masker = limits.get("masker") or PiiMasker()
                    row.values[name] = modality.mask_personal([row.values[name]], masker)[0]
    except ApiError:
        discard([row])  # files this row stored before one of its values was refused
        raise
    return row


def check_request_pixels(rows: list[tuple[str, dict[str, Any]]], limits: dict[str, Any], cap: int) -> int:
    """Refuse (413, naming the file that passes the cap) a request whose files would decode to more
    than `cap` pixels in all; else the pixels they decode to. `rows`: (field prefix, raw values) per row."""
    total = 0
    for where, values in rows:
        for name, value in values.items():
            measure = getattr(MODALITIES[name], "decoded_pixels", None)
            if measure is None or not isinstance(value, bytes) or not value:
                continue  # not a pixel modality, not sent, or left for make_row to refuse
            field = f"{where}{name}"
            try:
                total += measure(value, limits)
            except MediaError as error:
                raise invalid(field, str(error), status=getattr(error, "status", 422)) from None
            if total > cap:
                raise invalid(field, f"the request's images would decode to {total:,} pixels in all, more than "
                                     f"this server's {cap:,} (max_request_pixels): send fewer or smaller images "
                                     "per request", status=413)
    return total


def discard(rows: list[ModelRow]) -> None:
    """Delete the rows' temp files (safe to call twice)."""
    for row in rows:
        for value in row.values.values():
            if isinstance(value, Decoded):
                try:
                    os.unlink(value.path)
                except FileNotFoundError:
                    pass


__all__ = ["ApiError", "ModelRow", "check_request_pixels", "check_string", "decode_base64", "discard",
           "make_row", "save_upload"]
