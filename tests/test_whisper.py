"""Whisper tiny.en in PyTorch against its references: faster-whisper's log-mel, CTranslate2's
encoder (the same packaged weights), and a greedy transcript of synthesized speech."""
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from mmfuse.encoders import create_encoder
from mmfuse.encoders.log_mel import log_mel_batch, mel_filters
from mmfuse.encoders.whisper import repetition_cut, transcribe, whisper_model_dir

SR = 16_000


def signal(seconds: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    chirp = np.sin(2 * np.pi * (200 + 900 * t) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t))
    return (0.3 * chirp + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def numpy_log_mel(wave: np.ndarray) -> np.ndarray:
    """Whisper's recipe written out in numpy: 30 s of zeros appended, reflect padding, framed
    periodic-Hann FFT, last frame dropped, mel, log10, max-8 floor, (x+4)/4; first 3000 frames."""
    x = np.pad(np.pad(wave.astype(np.float64), (0, 30 * SR)), 200, mode="reflect")
    starts = np.arange(0, x.size - 400 + 1, 160)[:-1][:3000]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    power = np.abs(np.fft.rfft(x[starts[:, None] + np.arange(400)] * window, axis=1)) ** 2
    logs = np.log10(np.maximum(mel_filters().astype(np.float64) @ power.T, 1e-10))
    return (np.maximum(logs, logs.max() - 8.0) + 4.0) / 4.0


def test_mel_filters_are_slaney_triangles():
    filters = mel_filters()
    assert filters.shape == (80, 201) and filters.dtype == np.float32
    assert (filters >= 0).all() and (filters.sum(1) > 0).all()
    peaks = filters.argmax(1)
    assert (np.diff(peaks) >= 0).all() and peaks[0] <= 2 and peaks[-1] >= 190
    # Slaney normalisation: each triangle has unit area in Hz (40 Hz per FFT bin), up to how the
    # FFT grid samples it.
    area = filters.sum(1) * (SR / 400)
    assert np.allclose(area, 1.0, atol=0.1) and abs(area.mean() - 1.0) < 0.01


def test_log_mel_matches_a_numpy_stft():
    wave = signal(1.3)
    ours, frames = log_mel_batch([wave], 30 * SR)
    assert ours.shape == (1, 80, 3000) and frames.tolist() == [130]
    np.testing.assert_allclose(ours[0].numpy(), numpy_log_mel(wave), atol=2e-4)


def test_log_mel_matches_faster_whisper():
    feature_extractor = pytest.importorskip("faster_whisper.feature_extractor")
    reference = feature_extractor.FeatureExtractor()
    np.testing.assert_array_equal(reference.mel_filters, mel_filters())
    wave, other = signal(2.0, seed=3), signal(0.4, seed=4)
    full = reference(wave, padding=30 * SR)[:, :3000]
    ours, _ = log_mel_batch([wave, other], 30 * SR)
    np.testing.assert_allclose(ours[0].numpy(), full, atol=1e-4)
    trimmed, frames = log_mel_batch([other, wave], 2 * SR + 320)  # a clip padded only to the batch
    assert frames.tolist() == [40, 200]
    np.testing.assert_allclose(trimmed[1].numpy(), full[:, :202], atol=1e-4)
    np.testing.assert_allclose(trimmed[0].numpy(), reference(other, padding=30 * SR)[:, :202], atol=1e-4)


def test_encoder_matches_ctranslate2():
    ctranslate2 = pytest.importorskip("ctranslate2")
    encoder = create_encoder("audio", "whisper_tiny", window="full", segments=1).eval()
    wave = signal(1.7, seed=5)
    prepared = encoder.prepare([wave])
    with torch.no_grad():
        ours = encoder(prepared).tokens[0]
    mel, _ = log_mel_batch([wave], 30 * SR)
    model = ctranslate2.models.Whisper(str(whisper_model_dir()), device="cpu", compute_type="float32")
    reference = model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel.numpy())), to_cpu=True)
    reference = torch.from_numpy(np.asarray(reference))[0]
    assert reference.shape == ours.shape == (1500, 384)
    assert (ours - reference).abs().max() < 1e-3


def test_repetition_guard_keeps_one_copy():
    assert repetition_cut([5, 1, 2, 1, 2, 1, 2]) == 3
    assert repetition_cut([5, 1, 2, 1, 2]) is None
    assert repetition_cut([7] * 5) is None and repetition_cut([3] + [7] * 6) == 2


def speak(text: str, folder) -> np.ndarray:
    import soundfile
    import soxr

    path = folder / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True, timeout=30)
    wave, rate = soundfile.read(path, dtype="float32")
    return soxr.resample(wave, rate, SR).astype(np.float32)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_greedy_transcription_of_synthesized_speech(tmp_path):
    first = speak("what color is the circle", tmp_path)
    second = speak("is there a blue triangle in the image", tmp_path)
    texts = transcribe([first, second])
    assert words(texts[0]) == ["what", "color", "is", "the", "circle"]
    assert {"blue", "triangle", "image"} <= set(words(texts[1]))
    assert transcribe([]) == []
