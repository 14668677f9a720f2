"""Images: a table cell is a file path; decoded by `data.media.open_image` (header checked first)."""
from __future__ import annotations

import io
import os
import random
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter, UnidentifiedImageError
from pydantic import Field

from ..data import media
from ..data.media import MediaError, open_image
from .base import Decoded, EncoderSpec, Modality, register_modality

# Formats an upload may be in (PIL format names). Everything else PIL can read (TIFF, PSD, ICO,
# PCX, ...) is refused: rare in practice, and each extra decoder is extra attack surface.
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
_SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp"}


class UnsupportedFormat(MediaError):
    """Bytes in a format that is not accepted (a server answers this one 415, not 422)."""

    status = 415


class ImageEncoderConfig(EncoderSpec):
    name: str = "small_cnn"  # small_cnn | efficientnet_lite0 | timm:<any timm name> | tiny_image
    image_size: int = Field(64, gt=0)


# ----- noises for the robustness curves (on the decoded picture) -------------------------------

def gaussian(image: Image.Image, level: float, rng: random.Random) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32)
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0.0, 255 * level, pixels.shape)
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))


def blur(image: Image.Image, level: float, rng: random.Random) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius=level * max(image.size) / 8))


def occlusion(image: Image.Image, level: float, rng: random.Random) -> Image.Image:
    """A grey square covering `level` of the area, at a random place."""
    width, height = image.size
    side_w, side_h = int(width * level ** 0.5), int(height * level ** 0.5)
    x, y = rng.randint(0, width - side_w), rng.randint(0, height - side_h)
    out = image.copy()
    out.paste((128, 128, 128), (x, y, x + side_w, y + side_h))
    return out


@register_modality
class ImageModality(Modality):
    name = "image"
    default_column = "image"
    encoder_config = ImageEncoderConfig
    limits = {"max_pixels": (int, 50_000_000, "image pixel cap, checked from the header before decoding")}
    noises = {"gaussian": gaussian, "blur": blur, "occlusion": occlusion}
    help = "One image file (PNG, JPEG, WebP, GIF, BMP)."
    formats = ALLOWED_FORMATS  # what an upload may be in
    spatial = True  # its tokens are a grid of regions

    def decode(self, value: Any, data: Any) -> Image.Image:
        return open_image(value, max_pixels=data.max_pixels)

    def check_decoded(self, decoded: Image.Image, data: Any) -> None:
        pixels = decoded.width * decoded.height
        if pixels > data.max_pixels:
            raise MediaError(f"image too large: {decoded.width}×{decoded.height} = {pixels:,} pixels "
                             f"(max_pixels is {data.max_pixels:,})")

    def encoder_options(self, spec: ImageEncoderConfig) -> dict[str, Any]:
        return {"image_size": spec.image_size}

    def example_file(self, folder: Path, index: int) -> Path:
        path = Path(folder) / f"example-{index}.png"
        rng = np.random.default_rng(index)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
        return path

    def from_upload(self, data: bytes, field: str, folder: Path, limits: dict[str, Any]) -> Decoded:
        """Vet uploaded image bytes, cheapest check first: sniff, then the header (format allowlist,
        pixel count: a decompression bomb costs nothing), then the full decode (truncation, bad
        data) with the code that vets training images (`open_image`), from the bytes in memory;
        the stored file is the input's identity.

        With `limits["image_size"]` (the served model's input side) only a reduced image is kept
        (see `upload_side`), and at most `_DECODE_SLOTS` uploads decode at once, so concurrent
        requests of huge images cannot add up to the machine's memory."""
        max_pixels = limits["max_pixels"]
        if not data:
            raise MediaError("empty image")
        kind, _ = _header(data, max_pixels, None)
        with _DECODE_SLOTS:
            image = media.decode_image_bytes(data, max_pixels=max_pixels, reduce_to=upload_side(limits))
        # An upload carrying metadata (EXIF, GPS, XMP, comments) is stored as its decoded pixels
        # only, in PNG: what a user's camera recorded is never written to our disk.
        personal = _has_metadata(data)
        handle, path = tempfile.mkstemp(suffix=".png" if personal else _SUFFIX[kind], dir=folder)
        with os.fdopen(handle, "wb") as out:
            if personal:
                image.info.clear()
                image.save(out, format="PNG")
            else:
                out.write(data)
        return Decoded(path, image)

    def decoded_pixels(self, data: bytes, limits: dict[str, Any]) -> int:
        """How many pixels `from_upload` would decode (after a JPEG's reduced-scale draft), read
        from the header alone: a server caps their sum per request before decoding any."""
        return _header(data, limits["max_pixels"], upload_side(limits))[1]


# Decoding is CPU-bound: more concurrent decodes than cores only adds memory (a full-size decode
# of a 25-megapixel image is ~100 MB until it is reduced).
_DECODE_SLOTS = threading.BoundedSemaphore(max(2, os.cpu_count() or 2))
# A kept upload is at least this many times the model's input side: the encoder's own
# antialiased resize still does the final filtering, so answers stay close to a full decode's.
UPLOAD_SIDE_FACTOR = 4


def upload_side(limits: dict[str, Any]) -> int | None:
    """The side an upload is reduced towards (None: keep the full image)."""
    size = limits.get("image_size")
    return UPLOAD_SIDE_FACTOR * size if size else None


def _header(data: bytes, max_pixels: int, side: int | None) -> tuple[str, int]:
    """(format, pixels a decode would allocate), after checking the declared size — nothing is
    decoded yet. With `side`, a JPEG counts at the reduced scale it will be decoded at."""
    reason = media.sniff(data[: media.SNIFF_BYTES])
    if reason is not None:
        raise MediaError(reason)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS)) as im:
                width, height, kind = im.width, im.height, im.format
                if width * height <= max_pixels and side:
                    im.draft(None, (side, side))
                decoded = im.width * im.height
    except Image.DecompressionBombError:
        raise MediaError(f"image too large (max {max_pixels:,} pixels)") from None
    except UnidentifiedImageError:
        raise UnsupportedFormat(_unsupported(data)) from None
    except Exception as error:  # noqa: BLE001 - broken headers raise many types
        raise MediaError(f"truncated or corrupt image: {error or type(error).__name__}") from None
    if width * height > max_pixels:
        raise MediaError(f"image too large: {width}×{height} = {width * height:,} pixels (max {max_pixels:,})")
    return kind, decoded


METADATA_KEYS = ("exif", "xmp", "XML:com.adobe.xmp", "comment", "photoshop")


def _has_metadata(data: bytes) -> bool:
    """Whether vetted image bytes carry EXIF (GPS is an EXIF block), XMP, comments or PNG text."""
    with Image.open(io.BytesIO(data)) as im:
        return (any(key in im.info for key in METADATA_KEYS) or bool(im.getexif())
                or bool(getattr(im, "text", None)))


def _unsupported(data: bytes) -> str:
    allowed = ", ".join(ALLOWED_FORMATS)
    try:
        with Image.open(io.BytesIO(data), formats=media.allowed_formats()) as im:
            return f"image format {im.format} is not accepted (send {allowed})"
    except Exception:  # noqa: BLE001 - not an image PIL knows at all
        return f"not an image (unrecognised format; send {allowed})"
