"""Safe audio decoding: every bad file is refused with a reason a person can act on."""
from __future__ import annotations

import os
import signal
import struct

import numpy as np
import pytest

sf = pytest.importorskip("soundfile")
pytest.importorskip("soxr")

from mmfuse.data.audio_media import (  # noqa: E402
    audio_info,
    check_audio,
    decode_audio_bytes,
    open_audio,
)
from mmfuse.data.media import MediaError  # noqa: E402


def tone(seconds: float = 1.0, rate: int = 16_000, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def wav_header(rate: int, channels: int, bits: int, data_bytes: int) -> bytes:
    """A canonical 44-byte PCM WAV header whose data chunk claims `data_bytes`."""
    align = channels * bits // 8
    return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * align, align, bits)
            + b"data" + struct.pack("<I", data_bytes))


def refused(path, **caps) -> str:
    with pytest.raises(MediaError) as info:
        open_audio(path, **caps)
    reason = str(info.value)
    assert check_audio(path, **caps) == reason
    return reason


def test_good_wav_decodes_to_mono_float32(tmp_path):
    path = tmp_path / "ok.wav"
    sf.write(path, tone(), 16_000, subtype="PCM_16")
    audio = open_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1 and audio.shape == (16_000,)
    assert np.allclose(audio, tone(), atol=1e-3)
    assert check_audio(path) is None
    assert audio_info(path) == {"format": "WAV", "subtype": "PCM_16", "sample_rate": 16_000, "channels": 1,
                                "frames": 16_000, "seconds": 1.0}


def test_missing_file(tmp_path):
    assert refused(tmp_path / "nope.wav").startswith("file not found:")


def test_directory(tmp_path):
    folder = tmp_path / "clip.wav"
    folder.mkdir()
    assert refused(folder).startswith("not a file (a directory):")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)

    def hung(signum, frame):  # pragma: no cover - only when the FIFO is opened
        raise AssertionError("open_audio blocked on a FIFO")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(5)
    try:
        assert refused(fifo).startswith("not a file (a FIFO):")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_device_is_refused():
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    assert refused("/dev/zero").startswith("not a file (a device):")


def test_truncated_wav_is_refused_not_shortened(tmp_path):
    full = tmp_path / "full.wav"
    sf.write(full, tone(), 16_000, subtype="PCM_16")
    data = full.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: len(data) // 2])
    # libsndfile itself quietly reports (and decodes) the shorter clip ...
    assert sf.info(cut).frames < 16_000
    # ... which would be a silently wrong example; we refuse it.
    assert refused(cut) == ("truncated or corrupt audio: the WAV header promises 16,000 samples "
                            "but the file holds 7,989")
    odd = tmp_path / "odd.wav"
    odd.write_bytes(data[:-1])  # one byte short: half a sample missing
    assert refused(odd).startswith("truncated or corrupt audio:")


def test_wav_header_claiming_two_hours_with_no_samples(tmp_path):
    path = tmp_path / "liar.wav"
    path.write_bytes(wav_header(8_000, 1, 16, 7_200 * 8_000 * 2) + bytes(100))
    assert refused(path) == ("truncated or corrupt audio: the WAV header promises 57,600,000 samples "
                             "but the file holds 50")


def test_two_hour_file_is_refused_from_its_header(tmp_path):
    # A real, complete 2-hour FLAC: 1 kHz silence compresses to ~20 KB.
    path = tmp_path / "long.flac"
    with sf.SoundFile(path, "w", samplerate=1_000, channels=1, format="FLAC", subtype="PCM_16") as out:
        block = np.zeros(720_000, np.int16)
        for _ in range(10):
            out.write(block)
    assert path.stat().st_size < 200_000
    assert refused(path) == "audio too long: 7200.0 s (max_seconds is 30)"
    assert refused(path, max_seconds=600) == "audio too long: 7200.0 s (max_seconds is 600)"
    assert audio_info(path)["seconds"] == 7200.0  # no cap unless asked


def test_html_named_wav(tmp_path):
    path = tmp_path / "page.wav"
    path.write_text("<!DOCTYPE html>\n<html><body>403 Forbidden</body></html>\n")
    assert refused(path) == "not audio (looks like HTML)"


def test_text_and_garbage(tmp_path):
    text = tmp_path / "note.wav"
    text.write_text("404 Not Found\n")
    assert refused(text) == "not audio (looks like text)"
    noise = tmp_path / "noise.wav"
    noise.write_bytes(bytes(range(256)) * 8)
    assert refused(noise) == "not audio (unrecognised format)"
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    assert refused(empty) == "empty file"


def test_zero_samples(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, np.float32), 16_000)
    assert refused(path) == "empty audio (0 samples)"


def test_nan_and_inf_samples(tmp_path):
    for bad in (np.nan, np.inf):
        samples = tone()
        samples[100] = bad
        path = tmp_path / f"bad{bad}.wav"
        sf.write(path, samples, 16_000, subtype="FLOAT")
        assert refused(path) == "audio has NaN or infinite samples"


def test_implausible_rate_and_channels(tmp_path):
    slow = tmp_path / "slow.wav"
    slow.write_bytes(wav_header(500, 1, 16, 200) + bytes(200))
    assert refused(slow) == "implausible sample rate: 500 Hz (expected 1000–384000 Hz)"
    wide = tmp_path / "wide.wav"
    sf.write(wide, np.zeros((100, 10), np.float32), 16_000)
    assert refused(wide) == "too many channels: 10 (at most 8)"


def test_stereo_is_downmixed_by_mean(tmp_path):
    left, right = tone(freq=440.0), tone(freq=660.0)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 16_000, subtype="FLOAT")
    audio = open_audio(path)
    assert audio.shape == (16_000,)
    assert np.allclose(audio, (left + right) / 2, atol=1e-6)


def test_resampled_to_the_requested_rate(tmp_path):
    path = tmp_path / "cd.flac"
    sf.write(path, tone(2.0, rate=44_100), 44_100)
    audio = open_audio(path)
    assert audio.dtype == np.float32 and abs(len(audio) - 32_000) <= 1
    assert abs(len(open_audio(path, sample_rate=8_000)) - 16_000) <= 1
    # Still a 440 Hz tone after resampling.
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * 16_000 / len(audio) - 440) < 2


def test_mp3_and_m4a_are_refused_with_what_to_do(tmp_path):
    mp3 = tmp_path / "a.mp3"
    mp3.write_bytes(b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(500))
    assert refused(mp3) == "MP3 is not supported: convert to WAV/FLAC/OGG"
    if "MP3" in sf.available_formats():  # libsndfile >= 1.1 could decode it; we still refuse
        real = tmp_path / "real.mp3"
        sf.write(real, tone(), 16_000, format="MP3")
        assert refused(real) == "MP3 is not supported: convert to WAV/FLAC/OGG"
    m4a = tmp_path / "a.m4a"
    m4a.write_bytes(b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00" + bytes(500))
    assert refused(m4a) == "M4A/MP4 is not supported: convert to WAV/FLAC/OGG"


def test_truncated_flac_and_ogg(tmp_path):
    noise = (np.random.default_rng(0).standard_normal(48_000) * 0.1).astype(np.float32)
    for fmt in ("FLAC", "OGG"):
        path = tmp_path / f"n.{fmt.lower()}"
        sf.write(path, noise, 16_000, format=fmt)
        assert check_audio(path) is None
        data = path.read_bytes()
        cut = tmp_path / f"cut.{fmt.lower()}"
        cut.write_bytes(data[: int(len(data) * 0.9)])
        assert refused(cut).startswith("truncated or corrupt audio:")


def test_streamed_wav_with_unknown_length_is_accepted(tmp_path):
    # Writers streaming to a pipe (espeak-ng --stdout, sox) put a placeholder size in the header.
    samples = (tone() * 32767).astype("<i2").tobytes()
    header = bytearray(wav_header(16_000, 1, 16, 0x7FFFF000))
    path = tmp_path / "streamed.wav"
    path.write_bytes(bytes(header) + samples)
    assert open_audio(path).shape == (16_000,)


def test_decode_audio_bytes_has_the_same_checks(tmp_path):
    path = tmp_path / "ok.wav"
    sf.write(path, tone(), 16_000, subtype="PCM_16")
    data = path.read_bytes()
    assert decode_audio_bytes(data).shape == (16_000,)
    assert decode_audio_bytes(data, sample_rate=8_000).shape == (8_000,)
    cases = {
        data[: len(data) // 2]: "truncated or corrupt audio:",
        b"<html><body>oops</body></html>": "not audio (looks like HTML)",
        b"": "empty file",
    }
    for blob, reason in cases.items():
        with pytest.raises(MediaError) as info:
            decode_audio_bytes(blob)
        assert str(info.value).startswith(reason)
    with pytest.raises(MediaError, match=r"audio too long: 1\.0 s \(max_seconds is 0\.5\)"):
        decode_audio_bytes(data, max_seconds=0.5)
