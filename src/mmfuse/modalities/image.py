"""Images: a table cell is a file path; decoded by `data.media.open_image` (header checked first)."""
from __future__ import annotations

import io
import os
import random
import tempfile
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
        pixel count: a decompression bomb costs nothing), then the full decode of the stored file
        (truncation, bad data) with `open_image`, the code that vets training images."""
        max_pixels = limits["max_pixels"]
        if not data:
            raise MediaError("empty image")
        kind = _header_format(data, max_pixels)
        handle, path = tempfile.mkstemp(suffix=_SUFFIX[kind], dir=folder)
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        try:
            image = open_image(path, max_pixels=max_pixels)
        except MediaError:
            os.unlink(path)
            raise
        return Decoded(path, image)


def _header_format(data: bytes, max_pixels: int) -> str:
    """The image format, after checking the declared size — nothing is decoded yet."""
    reason = media.sniff(data[: media.SNIFF_BYTES])
    if reason is not None:
        raise MediaError(reason)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS)) as im:
                width, height, kind = im.width, im.height, im.format
    except Image.DecompressionBombError:
        raise MediaError(f"image too large (max {max_pixels:,} pixels)") from None
    except UnidentifiedImageError:
        raise UnsupportedFormat(_unsupported(data)) from None
    except Exception as error:  # noqa: BLE001 - broken headers raise many types
        raise MediaError(f"truncated or corrupt image: {error or type(error).__name__}") from None
    if width * height > max_pixels:
        raise MediaError(f"image too large: {width}×{height} = {width * height:,} pixels (max {max_pixels:,})")
    return kind


def _unsupported(data: bytes) -> str:
    allowed = ", ".join(ALLOWED_FORMATS)
    try:
        with Image.open(io.BytesIO(data), formats=media.allowed_formats()) as im:
            return f"image format {im.format} is not accepted (send {allowed})"
    except Exception:  # noqa: BLE001 - not an image PIL knows at all
        return f"not an image (unrecognised format; send {allowed})"
