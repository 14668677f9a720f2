"""Audio (speech): a table cell is a WAV / FLAC / OGG path, decoded to 16 kHz mono float32 by
`data.audio_media` with duration, rate and channels read from the header before decoding."""
from __future__ import annotations

import random
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from .base import Decoded, EncoderSpec, Modality, register_modality

SAMPLE_RATE = 16_000


class AudioEncoderConfig(EncoderSpec):
    name: str = "whisper_tiny"  # whisper_tiny | audio_cnn | tiny_audio


# ----- noises for the robustness curves (on the decoded waveform) ------------------------------

def white_noise(wave: np.ndarray, level: float, rng: random.Random) -> np.ndarray:
    """Gaussian noise at `level` times the clip's RMS (level 1: 0 dB signal-to-noise)."""
    rms = float(np.sqrt(np.mean(wave ** 2))) if wave.size else 0.0
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0.0, level * rms, wave.shape)
    return (wave + noise).astype(np.float32)


def time_mask(wave: np.ndarray, level: float, rng: random.Random) -> np.ndarray:
    """Silence one stretch covering `level` of the clip, at a random place (a dropped word)."""
    width = int(len(wave) * level)
    start = rng.randint(0, max(0, len(wave) - width))
    out = wave.copy()
    out[start:start + width] = 0.0
    return out


@register_modality
class AudioModality(Modality):
    name = "audio"
    default_column = None  # only when a table names its audio column
    encoder_config = AudioEncoderConfig
    limits = {"max_audio_seconds": (float, 30.0, "longest accepted clip, read from the header before decoding")}
    noises = {"white_noise": white_noise, "time_mask": time_mask}
    formats = ("WAV", "FLAC", "OGG")
    help = "One audio file (WAV, FLAC or OGG; resampled to 16 kHz mono)."

    def decode(self, value: Any, data: Any) -> np.ndarray:
        from ..data.audio_media import open_audio

        return open_audio(value, max_seconds=data.max_audio_seconds, sample_rate=SAMPLE_RATE)

    def check_decoded(self, decoded: np.ndarray, data: Any) -> None:
        from ..data.media import MediaError

        seconds = len(decoded) / SAMPLE_RATE
        if seconds > data.max_audio_seconds:
            raise MediaError(f"audio too long: {seconds:.1f} s (max_audio_seconds is {data.max_audio_seconds:g})")

    def example_file(self, folder: Path, index: int) -> Path:
        import soundfile

        path = Path(folder) / f"example-{index}.wav"
        t = np.arange(int((0.5 + 0.25 * index) * SAMPLE_RATE)) / SAMPLE_RATE  # of several lengths
        soundfile.write(path, (0.3 * np.sin(2 * np.pi * (220 + 40 * index) * t)).astype(np.float32), SAMPLE_RATE)
        return path

    def from_upload(self, data: bytes, field: str, folder: Path, limits: dict[str, Any]) -> Decoded:
        from ..data.audio_media import decode_audio_bytes

        wave = decode_audio_bytes(data, max_seconds=limits["max_audio_seconds"], sample_rate=SAMPLE_RATE)
        path = Path(folder) / f"{uuid.uuid4().hex}.audio"
        path.write_bytes(data)
        return Decoded(str(path), wave)
