"""The feature cache's shard files: what one holds, how it is written, and how rows are read back.

A shard is a safetensors file (no pickle) of up to 2,048 inputs of one encoder:
  pooled   (n, D) float32                    one row per input
  tokens   (sum of the inputs' lengths, D)   each input's real tokens, end to end (token encoders)
  offsets  (n + 1,) int64                    input i's tokens are rows offsets[i]:offsets[i + 1]
and, in the header's metadata, `format` and the inputs' keys (a JSON list, in row order).

Safetensors lays each tensor out raw (little-endian) after an 8-byte header length and the JSON
header, so a row is read at its byte offset with os.pread: a batch costs its own rows. Nothing is
memory-mapped: every page of a mapping that an epoch touches counts in the process's RSS (measured:
reading all rows of a 1 GiB file in random batches of 256 peaked at 1,044 MB RSS with np.memmap,
44 MB with pread, 0.7 s against 1.0 s), and the page cache keeps the file either way.

Shards of the first layout (`<key>/pooled`, `<key>/tokens`: two tensors per input) are rewritten
in this layout the first time they are read (`convert_legacy`).
"""
from __future__ import annotations

import json
import os
import struct
import uuid
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from ..errors import MmfuseError

FORMAT = "mmfuse-features-2"
ROW_BYTES = 4  # float32
OPEN_FILES = 64  # shard files each process keeps open (a user's limit may be 1,024 descriptors)


class ShardError(MmfuseError):
    """A shard file that cannot be read (cut short, or not a shard)."""


# One input's features: its pooled vector, and its real tokens (None: the encoder has no tokens).
Entry = tuple[Tensor, Tensor | None]


def write_shard(folder: Path, entries: list[tuple[str, Entry]], path: Path | None = None) -> Path:
    """A shard of `entries` (key, (pooled, tokens)) at `path` (default: a new name in `folder`);
    whole or absent: written under a temporary name of its own, then renamed."""
    keys = [key for key, _ in entries]
    tensors = {"pooled": torch.stack([pooled.float() for _, (pooled, _) in entries]).contiguous()}
    if entries and entries[0][1][1] is not None:
        tokens = [t.float() for _, (_, t) in entries]
        lengths = torch.tensor([0] + [len(t) for t in tokens], dtype=torch.int64)
        tensors["tokens"] = torch.cat(tokens).contiguous()
        tensors["offsets"] = lengths.cumsum(0)
    path = path or folder / f"{uuid.uuid4().hex}.safetensors"
    temporary = folder / f"{uuid.uuid4().hex}.tmp"  # not *.safetensors: never read half-written
    save_file(tensors, str(temporary), metadata={"format": FORMAT, "keys": json.dumps(keys)})
    temporary.rename(path)  # atomic: a shard is whole or absent
    return path


def read_header(path: Path) -> tuple[dict, int]:
    """(the safetensors JSON header, byte offset where the tensors' data starts)."""
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ShardError(f"{path}: not a feature shard (cut short)")
        (size,) = struct.unpack("<Q", head)
        try:
            return json.loads(handle.read(size)), 8 + size
        except ValueError:
            raise ShardError(f"{path}: not a feature shard (unreadable header)") from None


def read_keys(path: Path) -> list[str]:
    """The keys a shard holds, in row order; a first-layout shard is converted first."""
    header, _ = read_header(path)
    meta = header.get("__metadata__") or {}
    if meta.get("format") != FORMAT:
        return convert_legacy(path)
    return json.loads(meta["keys"])


def convert_legacy(path: Path) -> list[str]:
    """Rewrite a first-layout shard (`<key>/pooled`, `<key>/tokens`) in this layout, in place."""
    with safe_open(str(path), framework="pt") as handle:
        names = set(handle.keys())
        keys = sorted(name[: -len("/pooled")] for name in names if name.endswith("/pooled"))
        entries = [(key, (handle.get_tensor(f"{key}/pooled"),
                          handle.get_tensor(f"{key}/tokens") if f"{key}/tokens" in names else None))
                   for key in keys]
    write_shard(path.parent, entries, path)  # replaces it atomically (another process converting writes the same)
    return keys


class Shard:
    """Where one shard's tensors lie, and row reads at their byte offsets."""

    def __init__(self, path: Path):
        self.path = path
        header, base = read_header(path)
        pooled = header["pooled"]
        self.dim = pooled["shape"][1]
        self.pooled_at = base + pooled["data_offsets"][0]
        self.tokens_at = base + header["tokens"]["data_offsets"][0] if "tokens" in header else None
        self.offsets = None
        if "offsets" in header:
            start, end = header["offsets"]["data_offsets"]
            self.offsets = np.frombuffer(self._read(base + start, end - start), dtype="<i8")

    @property
    def has_tokens(self) -> bool:
        return self.tokens_at is not None

    def length(self, row: int) -> int:
        return int(self.offsets[row + 1] - self.offsets[row])

    def read_pooled(self, row: int, out: np.ndarray) -> None:
        self._read_into(self.pooled_at + row * self.dim * ROW_BYTES, out)

    def read_tokens(self, row: int, out: np.ndarray) -> None:
        """Input `row`'s tokens into `out` (length(row), D)."""
        self._read_into(self.tokens_at + int(self.offsets[row]) * self.dim * ROW_BYTES, out)

    def _read_into(self, offset: int, out: np.ndarray) -> None:
        if out.nbytes and os.preadv(descriptor(self.path), [out], offset) != out.nbytes:
            raise ShardError(f"{self.path}: cut short (a row ends past the end of the file)")

    def _read(self, offset: int, size: int) -> bytes:
        data = os.pread(descriptor(self.path), size, offset)
        if len(data) != size:
            raise ShardError(f"{self.path}: cut short")
        return data


_OPEN: OrderedDict[Path, int] = OrderedDict()


def descriptor(path: Path) -> int:
    """An open descriptor of `path`, the least recently used one closed past OPEN_FILES. pread has
    no file position, so a DataLoader worker forked with these descriptors reads them safely."""
    if path in _OPEN:
        _OPEN.move_to_end(path)
        return _OPEN[path]
    while len(_OPEN) >= OPEN_FILES:
        os.close(_OPEN.popitem(last=False)[1])
    _OPEN[path] = os.open(path, os.O_RDONLY)
    return _OPEN[path]
