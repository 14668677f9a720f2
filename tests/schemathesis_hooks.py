"""Schemathesis hooks (SCHEMATHESIS_HOOKS=tests/schemathesis_hooks.py): real files for file inputs.

The server's OpenAPI document (mmfuse/serve/openapi.py) types a file input as `format:
<modality>-base64` in JSON and as a binary part with its media types (`encoding.contentType`)
in multipart. What a valid file is (a PNG that decodes, within the pixel caps) is beyond JSON
Schema, so schemathesis is told here how to make one; otherwise every "valid" request would carry
random bytes, which the server rightly refuses.
"""
from __future__ import annotations

import base64
import io
import struct

import schemathesis
from hypothesis import strategies as st
from PIL import Image

IMAGE_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP", "image/gif": "GIF", "image/bmp": "BMP"}


def image_files(kind: str) -> st.SearchStrategy[bytes]:
    @st.composite
    def draw(draw) -> bytes:
        width, height = draw(st.integers(1, 48)), draw(st.integers(1, 48))
        color = draw(st.tuples(*[st.integers(0, 255)] * 3))
        buffer = io.BytesIO()
        Image.new("RGB", (width, height), color).save(buffer, format=kind)
        return buffer.getvalue()

    return draw()


@st.composite
def wav_files(draw) -> bytes:
    """16-bit mono PCM WAV, 16 kHz, 0.05-1 s of a random square-ish wave."""
    frames = draw(st.integers(800, 16_000))
    level = draw(st.integers(1, 20_000))
    period = draw(st.integers(2, 200))
    samples = b"".join(struct.pack("<h", level if (i // period) % 2 else -level) for i in range(frames))
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(samples), b"WAVE", b"fmt ", 16, 1, 1, 16_000,
                         32_000, 2, 16, b"data", len(samples))
    return header + samples


def base64_text(files: st.SearchStrategy[bytes]) -> st.SearchStrategy[str]:
    encoded = files.map(lambda data: base64.b64encode(data).decode())
    return st.one_of(encoded, encoded.map(lambda text: "data:application/octet-stream;base64," + text))


any_image = st.one_of([image_files(kind) for kind in IMAGE_FORMATS.values()])
for media_type, kind in IMAGE_FORMATS.items():
    schemathesis.openapi.media_type(media_type, image_files(kind))
schemathesis.openapi.media_type("audio/wav", wav_files())
schemathesis.openapi.format("image-base64", base64_text(any_image))
schemathesis.openapi.format("audio-base64", base64_text(wav_files()))
