"""The Encoder interface and its registry.

An encoder turns one modality's raw inputs into `Features`. It is split in two steps so the
expensive part can be cached or batched:
  prepare(values) -> dict of tensors with a leading dim per input (decode + resize / tokenize; CPU)
  forward(prepared) -> Features                                      (the network)
`fingerprint()` names everything that changes the output (name, weights, preprocessing): it is
the feature-cache key together with each input's content hash.
"""
from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..features import Features
from ..registry import Registry


class Encoder(nn.Module):
    modality: str = ""
    out_dim: int
    # From-scratch encoders train by default; pretrained ones stay frozen (and are cached).
    default_trainable: bool = True

    def __init__(self) -> None:
        super().__init__()
        self.trainable = self.default_trainable
        # Whether loading can rebuild the weights from their source (a package, hub name or file
        # of pretrained weights). Random or from-scratch weights cannot be rebuilt: a saved model
        # stores them, frozen or not.
        self.rebuildable = not self.default_trainable
        self._fingerprint: str | None = None

    @property
    def rebuilt_on_load(self) -> bool:
        """Frozen pretrained weights: left out of saved models and checkpoints, rebuilt on load."""
        return not self.trainable and self.rebuildable

    def set_trainable(self, trainable: bool | None) -> "Encoder":
        self.trainable = self.default_trainable if trainable is None else trainable
        self.requires_grad_(self.trainable)
        return self

    def prepare(self, values: list[Any]) -> dict[str, Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def forward(self, prepared: dict[str, Tensor]) -> Features:  # pragma: no cover - interface
        raise NotImplementedError

    def fit(self, values: list[Any]) -> None:
        """Learn what must be known before the weights exist (a vocabulary). Default: nothing."""

    def extra_state(self) -> dict[str, Any]:
        """JSON-able state that is not a tensor (a vocabulary); saved beside the weights."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no extra state to load")

    def describe(self) -> str:
        """Preprocessing and identity, part of the cache key."""
        return type(self).__name__

    def fingerprint(self) -> str:
        """Hash of describe() and every weight; computed once (frozen encoders do not change)."""
        if self._fingerprint is None or self.trainable:
            self._fingerprint = self.weights_digest()
        return self._fingerprint

    def weights_digest(self) -> str:
        digest = hashlib.sha256(self.describe().encode())
        for name, tensor in sorted(self.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())  # no copy
        return digest.hexdigest()[:16]

    def matches_fingerprint(self, recorded: str) -> bool:
        """Whether a saved model's recorded fingerprint names this encoder."""
        return recorded == self.fingerprint()

    def release(self) -> None:
        """Free what only computing new features needs (a frozen model whose features are cached)."""

    def load_weights(self) -> None:
        """Load whatever is loaded on first use now (a server, before it says it is ready)."""

    def matches_fingerprint(self, recorded: str) -> bool:
        """Whether a saved model's recorded fingerprint names this encoder."""
        return recorded == self.fingerprint()

    def release(self) -> None:
        """Free what only computing new features needs (a frozen model whose features are cached)."""

    def load_weights(self) -> None:
        """Load whatever is loaded on first use now (a server, before it says it is ready)."""

    def source_key(self) -> str | None:
        """Names the frozen weights by their files' sizes and modification times, so a fingerprint can
        be remembered (FeatureCache) instead of hashed again. Hashing reads every weight: 87 MB of
        MiniLM made resident that training on cached features never touches. None: not remembered."""
        files = [] if self.trainable else self.weight_files()
        if not files:
            return None
        parts = [self.describe()] + [f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]

    def remember_fingerprint(self, value: str) -> None:
        """Adopt a fingerprint remembered for this encoder's `source_key`."""
        if not self.trainable:
            self._fingerprint = value


def slice_prepared(prepared: dict[str, Tensor], index: Tensor | slice) -> dict[str, Tensor]:
    return {key: value[index] for key, value in prepared.items()}


def cat_prepared(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Prepared chunks -> one table; 2-D inputs (token ids, masks) padded to the widest chunk."""
    if not parts:
        return {}
    table = {}
    for key in parts[0]:
        pieces = [p[key] for p in parts]
        if pieces[0].dim() == 2:
            width = max(p.shape[1] for p in pieces)
            pieces = [torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in pieces]
        table[key] = torch.cat(pieces)
    return table


ENCODERS: Registry[Encoder] = Registry("encoder")
register_encoder = ENCODERS.register


def _split(name: str) -> tuple[str, str | None]:
    """'timm:resnet18' -> ('timm', 'resnet18'); 'minilm' -> ('minilm', None)."""
    if ":" in name:
        family, _, target = name.partition(":")
        return family, target
    return name, None


def check_encoder_name(modality: str, name: str) -> None:
    family, _ = _split(name)
    builder = ENCODERS.get(family)
    wanted = getattr(builder, "modality", None)
    if wanted and wanted != modality:
        raise ConfigError(
            f"encoders.{modality}.name: {name!r} is a {wanted} encoder; "
            f"{modality} encoders: {', '.join(available_encoders(modality))}"
        )


def available_encoders(modality: str | None = None) -> list[str]:
    return [n for n in ENCODERS.names()
            if modality is None or getattr(ENCODERS.get(n), "modality", None) == modality]


def create_encoder(modality: str, name: str, *, trainable: bool | None = None, **options) -> Encoder:
    check_encoder_name(modality, name)
    family, target = _split(name)
    if target is not None:
        options = {"target": target, **options}
    encoder = ENCODERS.create(family, **options)
    if options.get("pretrained") is False:  # e.g. timm:resnet18 with random weights: nothing rebuilds them
        encoder.rebuildable = False
    return encoder.set_trainable(trainable)
