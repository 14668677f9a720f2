"""Safe decoding of the audio a table points at: one clean mono float32 waveform, or a reason.

Audio columns fail in the same ways image columns do — HTML error pages saved as `.wav`,
half-downloaded files, a path that is a directory — plus some of their own: a header that
promises two hours of 384 kHz audio, a WAV cut off mid-download that libsndfile happily
decodes as a shorter clip, float WAVs full of NaN. Everything here either returns a 1-D
float32 array at the requested sample rate or raises `MediaError` with a short reason a person
can act on, so the manifest can report a bad row instead of crashing half-way through an epoch.

Decisions worth knowing:

* Formats: WAV (and WAVE_FORMAT_EXTENSIBLE / W64 / RF64), FLAC, OGG (Vorbis/Opus) and AIFF,
  decoded with soundfile (libsndfile). MP3 and M4A/AAC are refused with "convert to
  WAV/FLAC/OGG", even though soundfile >= 0.12 with libsndfile >= 1.1 can read MP3: whether
  MP3 decodes would then depend on which libsndfile a machine has (the same table would have
  different bad rows on different installs), MP3 frame counts in the header are estimates (so
  the truncation check below cannot be trusted) and encoder padding changes the length.
* Truncation: libsndfile does not fail on a WAV whose data chunk promises more bytes than the
  file holds — it quietly shortens the clip, and `soundfile.info` already reports the shorter
  length. We read the RIFF chunk sizes ourselves and refuse such a file. A truncated OGG is
  likewise shortened silently (its length comes from the last page it finds), so we require
  the last page to be complete and to carry the end-of-stream flag. FLAC reports truncation as
  a decode error. For every format, fewer decoded samples than the header promised is refused.
* Streamed WAVs whose data size is unknown (0, or a placeholder of 0x7FFFF000 and up, as
  written by ffmpeg / sox / espeak-ng writing to a pipe) are accepted; libsndfile then uses the
  length of the file, so truncation of such a file cannot be detected.

Order matters, as for images: stat (only a regular file is opened, so a FIFO cannot hang a
worker), sniff the first bytes, read the header, apply the caps, and only then decode — so a
huge file is refused before any large allocation.
"""
from __future__ import annotations

import io
import os
import struct
from pathlib import Path
from typing import IO, Any

import numpy as np

from .files import open_regular
from .media import SNIFF_BYTES, MediaError, _looks_like_text, sniff

__all__ = ["AUDIO_FORMATS", "audio_info", "check_audio", "decode_audio_bytes", "open_audio"]

DEFAULT_MAX_SECONDS = 30.0
DEFAULT_SAMPLE_RATE = 16_000
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 384_000
MAX_CHANNELS = 8

# libsndfile's major format names that we decode; anything else it recognises is refused.
AUDIO_FORMATS = ("WAV", "WAVEX", "W64", "RF64", "FLAC", "OGG", "AIFF")
_CONVERT = "convert to WAV/FLAC/OGG"

# Writers streaming a WAV to a pipe cannot know its length and put a placeholder in the data
# chunk: 0, 0xFFFFFFFF (ffmpeg) or 0x7FFFF000 (espeak-ng, sox). Sizes from there up mean "unknown".
_WAV_STREAMED = 0x7FFFF000

_OGG_MAX_PAGE = 27 + 255 + 255 * 255  # header + full lacing table + 255 segments of 255 bytes


# ----- sniffing -------------------------------------------------------------------------------

def _sniff_audio(head: bytes) -> str | None:
    """A reason when the first bytes are clearly not audio we decode (before libsndfile sees them)."""
    reason = sniff(head)  # the shared check: empty, HTML, SVG, XML, Git LFS pointer
    if reason is not None:
        if "SVG" in reason:
            return "not audio (looks like SVG)"
        return reason.replace("not an image", "not audio")
    if head.startswith(b"ID3") or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0
                                   and head[1] & 0x06 != 0):
        # ID3 tag, or an MPEG audio frame sync with layer bits set (MP1/2/3).
        return f"MP3 is not supported: {_CONVERT}"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0:
        return f"AAC (ADTS) is not supported: {_CONVERT}"
    if head[4:8] == b"ftyp":
        return f"M4A/MP4 is not supported: {_CONVERT}"
    return None


# ----- structural checks libsndfile does not make ---------------------------------------------

def _wav_truncation(handle: IO[bytes], size: int) -> str | None:
    """A reason when a RIFF/WAVE data chunk promises more bytes than the file holds."""
    handle.seek(0)
    riff = handle.read(12)
    if len(riff) < 12 or riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
        return None  # RIFX / RF64 / W64 / not WAV: left to libsndfile and the frame-count check
    block_align = 0
    position = 12
    for _ in range(256):  # real files have a handful of chunks
        handle.seek(position)
        header = handle.read(8)
        if len(header) < 8:
            return None  # no data chunk: libsndfile will refuse the file itself
        chunk_id, chunk_size = header[:4], struct.unpack("<I", header[4:])[0]
        payload = position + 8
        if chunk_id == b"fmt ":
            fmt = handle.read(16)
            if len(fmt) >= 14:
                block_align = struct.unpack("<H", fmt[12:14])[0]
        elif chunk_id == b"data":
            held = size - payload
            if chunk_size == 0 or chunk_size >= _WAV_STREAMED or chunk_size <= held:
                return None  # unknown length (streamed) or complete
            if block_align:
                return (f"truncated or corrupt audio: the WAV header promises {chunk_size // block_align:,} "
                        f"samples but the file holds {max(held, 0) // block_align:,}")
            return (f"truncated or corrupt audio: the WAV header promises {chunk_size:,} bytes of samples "
                    f"but the file holds {max(held, 0):,}")
        position = payload + chunk_size + (chunk_size & 1)
    return None


def _ogg_truncation(handle: IO[bytes], size: int) -> str | None:
    """A reason when an Ogg stream does not end with a complete end-of-stream page."""
    handle.seek(0)
    if handle.read(4) != b"OggS":
        return None
    start = max(0, size - _OGG_MAX_PAGE)
    handle.seek(start)
    tail = handle.read()
    at = tail.rfind(b"OggS")
    while at >= 0:
        page = tail[at:]
        if len(page) >= 27 and page[4] == 0:  # stream structure version 0
            segments = page[26]
            if len(page) < 27 + segments:
                break
            body = sum(page[27:27 + segments])
            if len(page) < 27 + segments + body:
                break
            if not page[5] & 0x04:
                break
            return None
        at = tail.rfind(b"OggS", 0, at)
    return "truncated or corrupt audio: the Ogg stream ends without a complete last page"


def _truncation(handle: IO[bytes], size: int) -> str | None:
    reason = _wav_truncation(handle, size) or _ogg_truncation(handle, size)
    handle.seek(0)
    return reason


# ----- opening --------------------------------------------------------------------------------

def _size(handle: IO[bytes]) -> int:
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    handle.seek(0)
    return size


def _soundfile():
    try:
        import soundfile
    except ImportError:
        raise MediaError("reading audio needs the `soundfile` package: pip install soundfile") from None
    except OSError as error:  # the wheel's bundled libsndfile failed to load
        raise MediaError(f"reading audio needs libsndfile, which failed to load: {error}") from None
    return soundfile


def _open_error(error: Exception, head: bytes) -> MediaError:
    detail = getattr(error, "error_string", None) or str(error) or type(error).__name__
    if "not recognised" in detail.lower() or "unknown format" in detail.lower():
        if _looks_like_text(head):
            return MediaError("not audio (looks like text)")
        return MediaError("not audio (unrecognised format)")
    return MediaError(f"truncated or corrupt audio: {detail}")


def _header(sound: Any, *, max_seconds: float) -> dict:
    """The header as a dict, after the caps that do not need a decode."""
    if sound.format == "MP3":
        raise MediaError(f"MP3 is not supported: {_CONVERT}")
    if sound.format not in AUDIO_FORMATS:
        raise MediaError(f"unsupported audio format {sound.format}: {_CONVERT}")
    rate, channels, frames = int(sound.samplerate), int(sound.channels), int(sound.frames)
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise MediaError(f"implausible sample rate: {rate} Hz (expected {MIN_SAMPLE_RATE}–{MAX_SAMPLE_RATE} Hz)")
    if channels < 1 or channels > MAX_CHANNELS:
        raise MediaError(f"too many channels: {channels} (at most {MAX_CHANNELS})")
    if frames <= 0:
        raise MediaError("empty audio (0 samples)")
    seconds = frames / rate
    if seconds > max_seconds:
        raise MediaError(f"audio too long: {seconds:.1f} s (max_seconds is {max_seconds:g})")
    return {"format": sound.format, "subtype": sound.subtype, "sample_rate": rate, "channels": channels,
            "frames": frames, "seconds": seconds}


def _open_sound(handle: IO[bytes], size: int):
    """(an open soundfile.SoundFile, the truncation reason or None), after the byte sniff."""
    head = handle.read(SNIFF_BYTES)
    reason = _sniff_audio(head)
    if reason is not None:
        raise MediaError(reason)
    truncated = _truncation(handle, size)
    try:
        return _soundfile().SoundFile(handle), truncated
    except Exception as error:  # noqa: BLE001 - LibsndfileError, RuntimeError, TypeError, ...
        raise _open_error(error, head) from None


def _decode(handle: IO[bytes], size: int, *, max_seconds: float, sample_rate: int) -> np.ndarray:
    sound, truncated = _open_sound(handle, size)
    with sound:
        info = _header(sound, max_seconds=max_seconds)
        if truncated:
            raise MediaError(truncated)
        try:
            samples = sound.read(dtype="float32", always_2d=True)
        except MemoryError:
            raise MediaError("audio too large to decode (out of memory)") from None
        except Exception as error:  # noqa: BLE001 - decoders signal damage with many types
            detail = getattr(error, "error_string", None) or str(error) or type(error).__name__
            raise MediaError(f"truncated or corrupt audio: {detail}") from None
    if samples.shape[0] < info["frames"]:
        raise MediaError(f"truncated or corrupt audio: decoded {samples.shape[0]:,} of the "
                         f"{info['frames']:,} samples the header promises")
    if not np.isfinite(samples).all():
        raise MediaError("audio has NaN or infinite samples")
    mono = samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0]
    if info["sample_rate"] != sample_rate:
        import soxr

        mono = soxr.resample(mono, info["sample_rate"], sample_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def _check_caps(max_seconds: float, sample_rate: int) -> None:
    # Programming errors, not bad rows: a ValueError rather than a MediaError.
    if not max_seconds > 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds!r}")
    if not MIN_SAMPLE_RATE <= int(sample_rate) <= MAX_SAMPLE_RATE:
        raise ValueError(f"sample_rate must be {MIN_SAMPLE_RATE}–{MAX_SAMPLE_RATE} Hz, got {sample_rate!r}")


# ----- public ---------------------------------------------------------------------------------

def open_audio(path: str | os.PathLike[str], *, max_seconds: float = DEFAULT_MAX_SECONDS,
               sample_rate: int = DEFAULT_SAMPLE_RATE) -> np.ndarray:
    """Decode one audio file to 1-D float32 mono at `sample_rate`, or raise MediaError.

    Stereo and multi-channel audio is downmixed by the mean; other rates are resampled with
    soxr (HQ). Never returns a partly decoded clip.
    """
    _check_caps(max_seconds, sample_rate)
    path = Path(path)
    with open_regular(path) as handle:
        return _decode(handle, _size(handle), max_seconds=max_seconds, sample_rate=int(sample_rate))


def decode_audio_bytes(data: bytes, *, max_seconds: float = DEFAULT_MAX_SECONDS,
                       sample_rate: int = DEFAULT_SAMPLE_RATE) -> np.ndarray:
    """`open_audio` for an upload held in memory, with the same checks."""
    _check_caps(max_seconds, sample_rate)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"decode_audio_bytes needs bytes, got {type(data).__name__}")
    data = bytes(data)
    return _decode(io.BytesIO(data), len(data), max_seconds=max_seconds, sample_rate=int(sample_rate))


def audio_info(path: str | os.PathLike[str], *, max_seconds: float = float("inf")) -> dict:
    """The header of an audio file without decoding it: format, subtype, sample_rate, channels,
    frames, seconds. Raises MediaError for everything `open_audio` refuses before decoding
    (by default without a duration cap)."""
    path = Path(path)
    with open_regular(path) as handle:
        sound, truncated = _open_sound(handle, _size(handle))
        with sound:
            info = _header(sound, max_seconds=max_seconds)
        if truncated:
            raise MediaError(truncated)
        return info


def check_audio(path: str | os.PathLike[str], *, max_seconds: float = DEFAULT_MAX_SECONDS,
                sample_rate: int = DEFAULT_SAMPLE_RATE) -> str | None:
    """The reason `path` cannot be used, or None when it decodes cleanly (one full decode)."""
    try:
        open_audio(path, max_seconds=max_seconds, sample_rate=sample_rate)
    except MediaError as error:
        return str(error)
    return None
