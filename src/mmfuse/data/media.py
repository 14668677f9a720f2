"""Safe decoding of the media a table points at: images (PIL) and text.

User tables point at files we did not make: HTML error pages saved as `.jpg`, half-downloaded
files, 16-bit scans, CMYK JPEGs, phone photos that rely on EXIF rotation, and now and then an
image whose header promises billions of pixels. Everything here either returns a clean RGB
image / string or raises `MediaError` with a short reason a person can act on; the manifest
turns that reason into a bad-row report instead of a crash half-way through an epoch.
"""
from __future__ import annotations

import io
import math
import os
import re
import warnings
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .files import MediaError, open_regular

__all__ = ["MediaError", "allowed_formats", "check_image", "clean_text", "open_image", "reduced", "sniff"]

SNIFF_BYTES = 1024

# Formats PIL may pick by content sniffing that we never want to decode from untrusted tables:
# EPS is rendered by shelling out to Ghostscript.
_REFUSED_FORMATS = {"EPS"}

# Modes with an alpha channel (or a premultiplied one) that are flattened onto white.
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
# High-bit-depth single-channel modes that `convert("RGB")` would clip instead of scale.
_WIDE_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}


# ----- images ---------------------------------------------------------------------------------

def sniff(head: bytes) -> str | None:
    """A reason when the first bytes are clearly not an image (checked before PIL sees them).

    HTML first: a saved login/error page is by far the most common "image" that is not one,
    and saying so points at the download step rather than at PIL.
    """
    if not head:
        return "empty file"
    text = head.lstrip(b"\xef\xbb\xbf").lstrip().lower()  # UTF-8 BOM, leading blank lines
    # Substring checks only on text: a real image may carry markup in its metadata (XMP).
    textual = _looks_like_text(head)
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or (textual and b"<html" in text):
        return "not an image (looks like HTML)"
    if textual and b"<svg" in text:
        return "not an image (SVG is not supported; convert it to PNG)"
    if text.startswith(b"<?xml"):
        return "not an image (looks like XML)"
    if text.startswith(b"version https://git-lfs"):
        return "not an image (a Git LFS pointer; run `git lfs pull`)"
    return None


def _looks_like_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        # The sniff window may cut a multi-byte character in half; ignore the last 3 bytes.
        try:
            head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    return True


def allowed_formats() -> list[str]:
    # Computed per call: plugins such as pillow-heif register themselves at import time.
    Image.init()
    return [name for name in Image.OPEN if name not in _REFUSED_FORMATS]


def _pixels_from_bomb_message(message: str) -> int | None:
    match = re.search(r"\((\d+) pixels\)", message)
    return int(match.group(1)) if match else None


def _raise_pil_limit(max_pixels: int) -> None:
    """Let PIL's own bomb guard agree with a user who asked for images larger than its default.

    PIL refuses images over 2 * MAX_IMAGE_PIXELS inside Image.open, before we see the size.
    We only ever raise the global (never lower it) so other users of PIL are not made stricter;
    our own header check below is what enforces `max_pixels`.
    """
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and max_pixels > limit:
        Image.MAX_IMAGE_PIXELS = max_pixels


def _scale_wide(im: Image.Image) -> Image.Image:
    """16-bit / 32-bit / float greyscale -> 8-bit L, scaled rather than clipped.

    `convert("RGB")` on I;16 clips everything above 255 to white, which turns most 16-bit
    scans into a blank image.
    """
    array = np.asarray(im)
    if im.mode.startswith("I;16"):
        scaled = array.astype(np.float64) / 257.0  # 65535 -> 255 exactly
    else:
        array = array.astype(np.float64)
        finite = array[np.isfinite(array)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        if im.mode == "F" and low >= 0.0 and high <= 1.0:
            scaled = array * 255.0  # a float image in [0, 1]
        elif low >= 0.0 and high <= 255.0:
            scaled = array  # already 8-bit values
        elif low >= 0.0 and high <= 65535.0:
            scaled = array / 257.0  # 16-bit PNGs decode to mode "I" in some Pillow versions
        else:
            scaled = (array - low) * (255.0 / (high - low))  # anything else: stretch min..max
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in _WIDE_MODES:
        return _scale_wide(im).convert("RGB")
    has_alpha = im.mode in _ALPHA_MODES or (
        im.mode in ("P", "L", "RGB", "1") and "transparency" in im.info
    )
    if has_alpha:
        # Flatten onto white: transparent pixels often hold black (or garbage) colour values,
        # and product shots / logos with transparent backgrounds are meant to be seen on white.
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        # Always a new image (convert copies even when the mode is already RGB), so the
        # result never refers back to the file that is about to be closed.
        return im.convert("RGB")
    except ValueError as error:  # e.g. LAB / HSV without a conversion path
        raise MediaError(f"unsupported image mode {im.mode}: {error}") from None


def open_image(path: str | os.PathLike[str], *, max_pixels: int, reduce_to: int | None = None) -> Image.Image:
    """Decode one image fully into RGB, or raise MediaError. Never returns a half-decoded image.

    Order matters: open only a regular file (a FIFO cannot hang us), sniff the bytes, read only the
    header, check the pixel count, and only then decode — so a decompression bomb is refused before
    any large allocation.

    `reduce_to` (for a caller that will shrink the image anyway, e.g. a server that knows its
    model's input side): decode only about as large as needed while keeping both sides at least
    `reduce_to` — a JPEG is decoded at 1/2, 1/4 or 1/8 scale (`draft`), any other format is
    averaged down by a whole factor right after loading, and the full-size decode is dropped at
    once. Training leaves it None: its encoders resize (and augment) from the full image.
    """
    with open_regular(path) as handle:
        try:
            head = handle.read(SNIFF_BYTES)
            handle.seek(0)
        except OSError as error:
            raise MediaError(f"cannot read file: {error.strerror or error}") from None
        reason = sniff(head)
        if reason is not None:
            raise MediaError(reason)
        return _decode(handle, head, max_pixels=max_pixels, reduce_to=reduce_to)


def decode_image_bytes(data: bytes, *, max_pixels: int, reduce_to: int | None = None) -> Image.Image:
    """`open_image` for a file's bytes already in memory (a server's upload): the same checks and
    the same decoding, without reading the bytes back from a file."""
    head = data[:SNIFF_BYTES]
    reason = sniff(head)
    if reason is not None:
        raise MediaError(reason)
    return _decode(io.BytesIO(data), head, max_pixels=max_pixels, reduce_to=reduce_to)


def _decode(handle: Any, head: bytes, *, max_pixels: int, reduce_to: int | None) -> Image.Image:
    _raise_pil_limit(max_pixels)
    try:
        with warnings.catch_warnings():
            # Our max_pixels check is authoritative; PIL's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(handle, formats=allowed_formats()) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise MediaError(
                        f"image too large: {width}×{height} = {width * height:,} pixels "
                        f"(max_pixels is {max_pixels:,})"
                    )
                if reduce_to:
                    im.draft(None, (reduce_to, reduce_to))  # JPEG only; a no-op for other formats
                # load() decodes everything (first frame of animations); a truncated stream
                # raises here rather than being padded with grey, as long as nobody has set
                # PIL's global ImageFile.LOAD_TRUNCATED_IMAGES.
                im.load()
                small = reduced(im, reduce_to) if reduce_to else im
                try:
                    oriented = ImageOps.exif_transpose(small)
                except Exception:  # noqa: BLE001 - a broken EXIF block should not cost the image
                    oriented = small
                return _to_rgb(oriented if oriented is not None else small)
    except MediaError:
        raise
    except Image.DecompressionBombError as error:
        pixels = _pixels_from_bomb_message(str(error))
        size = f"{pixels:,} pixels " if pixels else ""
        raise MediaError(f"image too large: {size}(max_pixels is {max_pixels:,})") from None
    except UnidentifiedImageError:
        if _looks_like_text(head):
            raise MediaError("not an image (looks like text)") from None
        raise MediaError("not an image (unrecognised format)") from None
    except MemoryError:
        raise MediaError("image too large to decode (out of memory)") from None
    except Exception as error:  # noqa: BLE001 - OSError, SyntaxError, EOFError, zlib.error, ...
        # Decoders signal damage with many exception types; all mean the same to the user.
        detail = str(error) or type(error).__name__
        raise MediaError(f"truncated or corrupt image: {detail}") from None


def reduced(im: Image.Image, side: int) -> Image.Image:
    """`im` averaged down by the largest whole factor that keeps both sides >= `side` (itself when
    that factor is 1). Palettes, 1-bit, 16-bit and colour-key transparency are resolved first, as
    `_to_rgb` would: their raw values cannot be averaged."""
    factor = min(im.width // side, im.height // side)
    if factor < 2:
        return im
    if im.mode in ("P", "PA") or "transparency" in im.info:
        im = im.convert("RGBA")
    elif im.mode == "1":
        im = im.convert("L")
    elif im.mode in _WIDE_MODES:
        im = _scale_wide(im)
    return im.reduce(factor)


def check_image(path: str | os.PathLike[str], *, max_pixels: int) -> str | None:
    """The reason `path` cannot be used, or None when it decodes cleanly (one full decode)."""
    try:
        open_image(path, max_pixels=max_pixels).close()
    except MediaError as error:
        return str(error)
    return None


# ----- text -----------------------------------------------------------------------------------

def clean_text(value: Any, *, max_chars: int) -> str:
    """A usable text cell: stripped, NUL-free, at most `max_chars` characters.

    Overlong text is truncated rather than rejected: encoders truncate to their token limit
    anyway, and a long caption is still a good example. Blank text is an error because a
    present-but-empty cell is usually a broken export, unlike a missing cell (handled by the
    caller as "modality absent").
    """
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    elif not isinstance(value, str):
        if isinstance(value, float) and math.isnan(value):
            raise MediaError("empty text")
        value = str(value)  # a number in a text column is still text
    text = value.replace("\x00", "").strip()
    if not text:
        raise MediaError("empty text")
    _check_unicode(text)
    if len(text) > max_chars:
        text = text[:max_chars].rstrip()
    return text


_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _check_unicode(text: str) -> None:
    """Refuse a lone surrogate (JSON may escape one, `"\\ud800"`; a server reading raw invalid
    UTF-8 with `surrogateescape` turns each bad byte into one): such a string cannot be encoded,
    and would fail deep inside tokenizers, pandas or the feature cache instead of here."""
    found = _SURROGATE.search(text)
    if found is not None:
        raise MediaError(f"not valid Unicode text: invalid UTF-8 or a lone surrogate "
                         f"(U+{ord(found.group()):04X}) at character {found.start()}")
