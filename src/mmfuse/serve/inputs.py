"""Untrusted request values -> model inputs, or an ApiError naming the field.

Images arrive as bytes (an upload or base64). Checks run cheapest first and the pixel count is
read from the header before any decoding, so a decompression bomb costs nothing; the full
decode (which catches truncated files) is `mmfuse.data.media.open_image`, the same code that
vets training images. A validated image is written to a per-server temp folder (the file is the
input's identity for the feature caches; the caller deletes it after the request) and handed on
with its decoded pixels as a `DecodedImage`, so the Predictor does not decode it again.
"""
from __future__ import annotations

import base64
import binascii
import io
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..data import media
from ..data.manifest import DecodedImage
from .errors import ApiError, invalid

# Formats a client may send (PIL format names). Everything else PIL can read (TIFF, PSD, ICO,
# PCX, ...) is refused: rare in practice, and each extra decoder is extra attack surface.
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp"}
_DATA_URL = re.compile(r"^data:[\w/+.-]*;base64,", re.IGNORECASE)


@dataclass
class ModelRow:
    """One validated row: a decoded image file and/or a text (None where absent)."""

    image: DecodedImage | None = None
    text: str | None = None


def decode_base64(value: str, field: str) -> bytes:
    """Plain base64 or a data URL (`data:image/png;base64,...`)."""
    payload = _DATA_URL.sub("", value.strip(), count=1)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(field, "not valid base64 (expected the image bytes, base64-encoded)") from None
    if not data:
        raise invalid(field, "empty image")
    return data


def check_text(value: str | None, field: str, *, max_chars: int) -> str | None:
    """None stays None (no text: the modality is absent); blank or overlong text is refused."""
    if value is None:
        return None
    text = value.replace("\x00", "").strip()
    if not text:
        raise invalid(field, "empty text (leave the field out to predict without text)")
    if len(text) > max_chars:
        raise invalid(field, f"text too long: {len(text):,} characters (max {max_chars:,})")
    return text


def _header_format(data: bytes, field: str, max_pixels: int) -> str:
    """The image format, after checking the declared size — nothing is decoded yet."""
    reason = media.sniff(data[: media.SNIFF_BYTES])
    if reason is not None:
        raise invalid(field, reason)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS)) as im:
                width, height, kind = im.width, im.height, im.format
    except Image.DecompressionBombError:
        raise invalid(field, f"image too large (max {max_pixels:,} pixels)") from None
    except UnidentifiedImageError:
        raise invalid(field, _unsupported(data), status=415) from None
    except Exception as error:  # noqa: BLE001 - broken headers raise many types
        raise invalid(field, f"truncated or corrupt image: {error or type(error).__name__}") from None
    if width * height > max_pixels:
        raise invalid(field, f"image too large: {width}×{height} = {width * height:,} pixels "
                             f"(max {max_pixels:,})")
    return kind


def _unsupported(data: bytes) -> str:
    allowed = ", ".join(ALLOWED_FORMATS)
    try:
        with Image.open(io.BytesIO(data), formats=media.allowed_formats()) as im:
            return f"image format {im.format} is not accepted (send {allowed})"
    except Exception:  # noqa: BLE001 - not an image PIL knows at all
        return f"not an image (unrecognised format; send {allowed})"


def save_image(data: bytes, field: str, *, max_pixels: int, folder: Path) -> DecodedImage:
    """Validate image bytes fully and store them; returns the file with its decoded pixels
    (the caller deletes the file)."""
    if not data:
        raise invalid(field, "empty image")
    kind = _header_format(data, field, max_pixels)
    handle, path = tempfile.mkstemp(suffix=SUFFIX[kind], dir=folder)
    with os.fdopen(handle, "wb") as out:
        out.write(data)
    try:
        image = media.open_image(path, max_pixels=max_pixels)  # full decode: truncation, bad data
    except media.MediaError as error:
        os.unlink(path)
        raise invalid(field, str(error)) from None
    return DecodedImage(path, image)


def discard(rows: list[ModelRow]) -> None:
    """Delete the rows' temp image files (safe to call twice)."""
    for row in rows:
        if row.image is not None:
            try:
                os.unlink(row.image)
            except FileNotFoundError:
                pass


__all__ = ["ALLOWED_FORMATS", "ApiError", "ModelRow", "check_text", "decode_base64", "discard", "save_image"]
