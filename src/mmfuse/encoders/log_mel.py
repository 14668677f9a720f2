"""Whisper's log-mel front end in torch (the numbers of openai-whisper / faster-whisper).

16 kHz mono -> STFT (n_fft 400, hop 160, periodic Hann window) -> power -> 80 Slaney-style mel
bands (librosa's `filters.mel(sr=16000, n_fft=400, n_mels=80)`, computed here in numpy) ->
log10(clamp 1e-10) -> floor at (max - 8) per clip -> (x + 4) / 4.

Frame i is centred on sample i * hop. Whisper pads the clip with 30 s of zeros, reflect-pads both
ends by n_fft // 2 and drops the last STFT frame. The right-hand reflection then mirrors zeros, so
here the left end is reflected and the right end zero-padded: every frame of a clip comes out the
same whatever the batch is padded to (30 s or just past its longest clip), and equal to Whisper's.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

SAMPLE_RATE = 16_000
N_FFT = 400
HOP_LENGTH = 160
N_MELS = 80


def _hz_to_mel(freqs: np.ndarray) -> np.ndarray:
    """Slaney mel scale (librosa htk=False): linear below 1 kHz, logarithmic above."""
    freqs = np.asarray(freqs, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    mels = freqs / f_sp
    high = freqs >= min_log_hz
    mels[high] = min_log_mel + np.log(freqs[high] / min_log_hz) / logstep
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    freqs = f_sp * mels
    high = mels >= min_log_mel
    freqs[high] = min_log_hz * np.exp(logstep * (mels[high] - min_log_mel))
    return freqs


@lru_cache(maxsize=8)
def mel_filters(n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) float32 triangular filters, Slaney-normalised (librosa's default)."""
    fft_freqs = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(np.array([0.0]))[0],
                                   _hz_to_mel(np.array([sample_rate / 2]))[0], n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    weights.flags.writeable = False
    return weights.astype(np.float32)


def frames_for(num_samples: int | Tensor) -> int | Tensor:
    """Real frames of a clip: those centred on one of its samples, ceil(samples / hop), at least 1."""
    if isinstance(num_samples, Tensor):
        return ((num_samples + HOP_LENGTH - 1) // HOP_LENGTH).clamp_min(1)
    return max(1, -(-int(num_samples) // HOP_LENGTH))


def pad_waveforms(waveforms: Sequence[np.ndarray], num_samples: int | None = None) -> tuple[Tensor, Tensor]:
    """1-D float clips -> ((B, num_samples) float32 zero-padded/truncated, (B,) kept lengths).

    num_samples defaults to the longest clip."""
    arrays = [np.asarray(w, dtype=np.float32).reshape(-1) for w in waveforms]
    width = num_samples if num_samples is not None else max((a.size for a in arrays), default=0)
    out = torch.zeros(len(arrays), width, dtype=torch.float32)
    lengths = torch.zeros(len(arrays), dtype=torch.long)
    for row, array in enumerate(arrays):
        n = min(array.size, width)
        out[row, :n] = torch.from_numpy(array[:n])
        lengths[row] = n
    return out, lengths


def log_mel(audio: Tensor, num_frames: int, *, n_mels: int = N_MELS) -> Tensor:
    """(B, S) zero-padded 16 kHz waveforms -> (B, n_mels, num_frames) Whisper log-mel.

    Samples past num_frames * hop are dropped; a shorter batch is zero-padded (silence)."""
    want = num_frames * HOP_LENGTH
    if audio.shape[-1] < want:
        audio = torch.nn.functional.pad(audio, (0, want - audio.shape[-1]))
    audio = audio[..., :want].float()
    half = N_FFT // 2
    # Left: reflect like torch.stft(center=True). Right: zeros, as Whisper's 30 s zero padding gives.
    source = audio if want > half else torch.nn.functional.pad(audio, (0, half + 1 - want))
    left = source[..., 1: half + 1].flip(-1)
    padded = torch.cat([left, audio, audio.new_zeros(audio.shape[0], half)], dim=-1)
    window = torch.hann_window(N_FFT, dtype=audio.dtype, device=audio.device)
    spec = torch.stft(padded, N_FFT, HOP_LENGTH, window=window, center=False, return_complex=True)
    power = spec[..., :-1].abs() ** 2  # (B, freq, num_frames): the last frame dropped, as Whisper does
    filters = torch.from_numpy(mel_filters(n_mels)).to(power)
    mel = filters @ power
    logs = torch.clamp(mel, min=1e-10).log10()
    floor = logs.amax(dim=(1, 2), keepdim=True) - 8.0
    logs = torch.maximum(logs, floor)
    return (logs + 4.0) / 4.0


def log_mel_batch(waveforms: Sequence[np.ndarray] | Tensor, num_samples: int, *,
                  n_mels: int = N_MELS) -> tuple[Tensor, Tensor]:
    """A batch of clips padded (or cut) to num_samples -> ((B, n_mels, frames), (B,) real frames).

    frames = ceil(num_samples / 160); a clip's real frames are ceil(its samples / 160)."""
    frames = -(-num_samples // HOP_LENGTH)
    if isinstance(waveforms, Tensor):
        audio = waveforms.float()
        lengths = torch.full((audio.shape[0],), min(audio.shape[-1], num_samples), dtype=torch.long)
    else:
        audio, lengths = pad_waveforms(waveforms, num_samples)
    return log_mel(audio, frames, n_mels=n_mels), frames_for(lengths.clamp_max(num_samples)).clamp_max(frames)
