"""Audio (speech) encoders. Inputs are 1-D float32 numpy arrays of mono 16 kHz samples.

`prepare` keeps the waveform (zero-padded to the batch's longest clip) and its length; the
log-mel front end (`log_mel.py`, Whisper's) runs inside forward. Prepared tables padded to a
wider clip elsewhere are trimmed back to the longest real clip of each batch. Tokens are time
frames, with a mask over each clip's real frames; pooled is their masked mean.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigError, DataError
from ..features import Features, masked_mean
from .base import Encoder, register_encoder
from .log_mel import HOP_LENGTH, N_FFT, N_MELS, SAMPLE_RATE, frames_for, log_mel


class AudioEncoder(Encoder):
    """Shared preprocessing: waveforms in `prepare`, Whisper log-mel in `mel()`.

    `frame_multiple`: the padded number of mel frames of a batch is a multiple of it (the time
    stride of the network), so each clip's own window is the same in any batch."""

    modality = "audio"
    frame_multiple: int = 1

    def __init__(self, *, n_mels: int = N_MELS, max_seconds: float = 30.0):
        super().__init__()
        if not max_seconds > 0:
            raise ConfigError(f"audio encoder max_seconds must be > 0, got {max_seconds!r}")
        self.n_mels = int(n_mels)
        self.max_seconds = float(max_seconds)
        self.max_samples = int(round(self.max_seconds * SAMPLE_RATE))

    def prepare(self, values: list[Any]) -> dict[str, Tensor]:
        """{"audio": (B, S) float32 zero-padded, "samples": (B,) real samples}; clips longer than
        max_seconds are cut. S is the longest clip rounded up to whole frame_multiple frames."""
        arrays = []
        for value in values:
            array = np.asarray(value, dtype=np.float32)
            if array.ndim != 1:
                raise DataError(f"audio must be a 1-D mono waveform, got shape {array.shape}")
            arrays.append(array[: self.max_samples])
        step = HOP_LENGTH * self.frame_multiple
        longest = max((a.size for a in arrays), default=0)
        width = max(step, -(-longest // step) * step)
        audio = torch.zeros(len(arrays), width, dtype=torch.float32)
        samples = torch.zeros(len(arrays), dtype=torch.long)
        for row, array in enumerate(arrays):
            audio[row, : array.size] = torch.from_numpy(np.ascontiguousarray(array))
            samples[row] = array.size
        return {"audio": audio, "samples": samples}

    def real_frames(self, prepared: dict[str, Tensor]) -> Tensor:
        """(B,) mel frames centred on a real sample of each clip (at least 1)."""
        return frames_for(prepared["samples"].clamp_max(self.max_samples))

    def mel(self, prepared: dict[str, Tensor], num_frames: int | None = None) -> tuple[Tensor, Tensor]:
        """((B, n_mels, F) log-mel, (B,) real frames). F defaults to the longest clip's frames
        rounded up to frame_multiple (trailing padding of a gathered table is dropped)."""
        frames = self.real_frames(prepared)
        if num_frames is None:
            longest = int(frames.max()) if frames.numel() else 1
            num_frames = -(-longest // self.frame_multiple) * self.frame_multiple
        return log_mel(prepared["audio"], num_frames, n_mels=self.n_mels), frames.clamp_max(num_frames)

    def describe_mel(self) -> str:
        return (f"log_mel(sr={SAMPLE_RATE}, n_fft={N_FFT}, hop={HOP_LENGTH}, n_mels={self.n_mels}, hann, power, "
                f"slaney, log10 clamp 1e-10, max-8 floor, (x+4)/4), max_seconds={self.max_seconds:g}")

    def describe(self) -> str:
        return f"{type(self).__name__}:{self.describe_mel()}"


def audio_block(c_in: int, c_out: int, *, pool_time: bool) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.MaxPool2d((2, 2 if pool_time else 1), ceil_mode=True),
    )


@register_encoder("audio_cnn")
class AudioCNN(AudioEncoder):
    """A log-mel CNN trained from scratch: conv-BN-ReLU-maxpool blocks on the (1, n_mels, frames)
    spectrogram. Every block halves frequency; the first `time_pools` (default: up to 3) also halve
    time. Frequency is then averaged away, leaving tokens (B, ceil(frames / 2**time_pools), C).

    Padding never reaches a real frame: the spectrogram past each clip's real frames and every
    block's output past its real (pooled) length are zeroed, so a clip gives the same output alone
    or padded in a batch (in eval mode; training-mode BatchNorm mixes the batch by design)."""

    def __init__(self, *, n_mels: int = N_MELS, channels: tuple[int, ...] = (32, 64, 128, 128),
                 time_pools: int | None = None, max_seconds: float = 30.0):
        super().__init__(n_mels=n_mels, max_seconds=max_seconds)
        channels = tuple(int(c) for c in channels)
        time_pools = min(3, len(channels)) if time_pools is None else int(time_pools)
        if not channels or not 0 <= time_pools <= len(channels):
            raise ConfigError(f"audio_cnn: need >= 1 channel and 0 <= time_pools <= {len(channels)}, "
                              f"got channels={channels}, time_pools={time_pools}")
        self.channels, self.time_pools = channels, int(time_pools)
        self.frame_multiple = 2 ** self.time_pools
        widths = [1, *channels]
        self.blocks = nn.ModuleList(audio_block(a, b, pool_time=i < self.time_pools)
                                    for i, (a, b) in enumerate(zip(widths, widths[1:])))
        self.out_dim = channels[-1]

    def forward(self, prepared: dict[str, Tensor]) -> Features:
        mel, frames = self.mel(prepared)
        lengths = frames.to(mel.device)
        x = mel.unsqueeze(1)  # (B, 1, n_mels, F)
        x = x * _time_mask(lengths, x.shape[-1]).view(x.shape[0], 1, 1, -1)
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index < self.time_pools:
                lengths = (lengths + 1) // 2  # ceil_mode pooling
            x = x * _time_mask(lengths, x.shape[-1]).view(x.shape[0], 1, 1, -1)
        tokens = x.mean(2).transpose(1, 2)  # (B, T', C)
        mask = _time_mask(lengths, tokens.shape[1])
        return Features(pooled=masked_mean(tokens, mask), tokens=tokens, mask=mask)

    def describe(self) -> str:
        return f"{super().describe()}:channels={self.channels}:time_pools={self.time_pools}"


def _time_mask(lengths: Tensor, width: int) -> Tensor:
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


@register_encoder("tiny_audio")
def tiny_audio(*, n_mels: int = 16, channels: tuple[int, ...] = (8, 16), time_pools: int = 2,
               max_seconds: float = 30.0) -> AudioCNN:
    """A two-block random log-mel CNN on 16 mel bands, for tests and examples (no download)."""
    return AudioCNN(n_mels=n_mels, channels=tuple(channels), time_pools=time_pools, max_seconds=max_seconds)


tiny_audio.modality = "audio"
