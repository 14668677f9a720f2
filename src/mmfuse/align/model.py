"""AlignedModel: frozen image + text encoders, and a projection head per modality into one
L2-normalised space where a caption and its image are close.

    m = AlignedModel.load("runs/align/model")
    m.embed_texts(["a red circle"]) @ m.embed_images(["shape.png"]).T    # cosine similarities

A model directory holds config.yaml (the resolved config), model.safetensors (heads, and the
weights of encoders that cannot be rebuilt from a source, e.g. random test encoders),
encoders.json (fingerprints + vocabularies) and metrics.json. Nothing is pickled.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..activations import GELU
from ..artifact import read_config, read_json, read_part
from ..config import AlignConfig, Config, dump_config
from ..data.media import MediaError, open_image
from ..encoders import Encoder, create_encoder
from ..errors import ArtifactError, ConfigError, DataError

MODALITIES = ("image", "text")
FILES = ("config.yaml", "model.safetensors", "encoders.json")
EMBED_BATCH = 64


class ProjectionHead(nn.Module):
    """standardise -> linear (or a one-hidden-layer MLP) -> fixed read-out (identity unless a CCA
    read-out was fitted). Standardising with the training features' mean / std lets one learning
    rate suit encoders whose feature scales differ by orders of magnitude."""

    def __init__(self, in_dim: int, dim: int, hidden: int = 0):
        super().__init__()
        self.net = nn.Linear(in_dim, dim) if hidden == 0 else nn.Sequential(
            nn.Linear(in_dim, hidden), GELU(), nn.Linear(hidden, dim))
        self.register_buffer("in_mean", torch.zeros(in_dim))
        self.register_buffer("in_std", torch.ones(in_dim))
        self.register_buffer("out_mean", torch.zeros(dim))
        self.register_buffer("out_matrix", torch.eye(dim))

    def standardise(self, features: Tensor) -> Tensor:
        return (features - self.in_mean) / self.in_std

    def forward(self, standardised: Tensor) -> Tensor:
        return self.net(standardised)

    def readout(self, z: Tensor) -> Tensor:
        return (z - self.out_mean) @ self.out_matrix


def rebuildable(encoder: Encoder) -> bool:
    """Pretrained encoders are rebuilt from their source on load (and fingerprint-checked);
    others (random or from-scratch weights) are stored in the artifact."""
    return encoder.rebuildable


def build_align_encoders(config: Config) -> dict[str, Encoder]:
    encoders = {}
    for modality in MODALITIES:
        spec = getattr(config.encoders, modality)
        if spec is None:
            raise ConfigError(f"encoders.{modality}: alignment needs both an image and a text encoder")
        if spec.trainable:
            raise ConfigError(f"encoders.{modality}.trainable: fine-tuning the towers is not supported by "
                              "`mmfuse align` yet; it trains projection heads over frozen features")
        size = {"image_size": spec.image_size} if modality == "image" else {"max_tokens": spec.max_tokens}
        encoders[modality] = create_encoder(modality, spec.name, trainable=False, **size, **spec.options)
    return encoders


class AlignedModel(nn.Module):
    def __init__(self, config: Config, encoders: dict[str, Encoder]):
        super().__init__()
        if config.align is None:
            config = config.model_copy(update={"align": AlignConfig()})
        self.config = config
        self.encoders = nn.ModuleDict(encoders)
        align = config.align
        self.heads = nn.ModuleDict({m: ProjectionHead(e.out_dim, align.dim, align.hidden) for m, e in encoders.items()})
        self.eval()

    @property
    def dim(self) -> int:
        return self.config.align.dim

    # ----- embedding ------------------------------------------------------------------------------
    def embed_features(self, modality: str, pooled: Tensor) -> Tensor:
        """Pooled encoder features (B, D) -> (B, dim) unit vectors in the shared space."""
        head = self.heads[modality]
        return F.normalize(head.readout(head(head.standardise(pooled))), dim=-1)

    @torch.no_grad()
    def _embed(self, modality: str, values: Sequence[Any], load=list) -> np.ndarray:
        """Batches of EMBED_BATCH, each loaded (images decoded) only when its turn comes."""
        encoder = self.encoders[modality].eval()
        out = [np.zeros((0, self.dim), dtype=np.float32)]
        for first in range(0, len(values), EMBED_BATCH):
            prepared = encoder.prepare(load(values[first: first + EMBED_BATCH]))
            pooled = encoder(prepared).pooled.float()
            out.append(self.embed_features(modality, pooled).numpy().astype(np.float32))
        return np.concatenate(out)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32, L2-normalised."""
        texts = list(texts)
        for position, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"text {position + 1}: expected a non-empty string, got {text!r}")
        return self._embed("text", texts)

    def embed_images(self, images: Sequence[str | Path | Image.Image]) -> np.ndarray:
        """Paths or PIL images -> (n, dim) float32, L2-normalised. A bad file raises DataError
        naming it (a decoded image is checked like any table image: size limit, corrupt data)."""
        return self._embed("image", list(images), lambda chunk: [self._open(item) for item in chunk])

    def _open(self, item: str | Path | Image.Image) -> Image.Image:
        if isinstance(item, Image.Image):
            return item.convert("RGB")
        try:
            return open_image(str(item), max_pixels=self.config.data.max_pixels)
        except MediaError as error:
            raise DataError(f"{item}: {error}") from None

    # ----- artifact -------------------------------------------------------------------------------
    def save(self, directory: str | Path, metrics: dict[str, Any] | None = None) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(dump_config(self.config))
        state = {f"heads.{k}": v for k, v in self.heads.state_dict().items()}
        for modality, encoder in self.encoders.items():
            if not rebuildable(encoder):
                state.update({f"encoders.{modality}.{k}": v for k, v in encoder.state_dict().items()})
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(out / "model.safetensors"))
        encoders = {m: {"fingerprint": e.fingerprint(), "stored": not rebuildable(e), "extra_state": e.extra_state()}
                    for m, e in self.encoders.items()}
        (out / "encoders.json").write_text(json.dumps(encoders, indent=1))
        if metrics is not None:
            (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        return out

    @classmethod
    def load(cls, directory: str | Path) -> "AlignedModel":
        path = Path(directory)
        missing = [name for name in FILES if not (path / name).is_file()]
        if not path.is_dir() or missing:
            raise ArtifactError(f"{path} is not an aligned model directory (missing {', '.join(missing or FILES)}); "
                                "write one with `mmfuse align CONFIG`")
        config = read_config(path / "config.yaml")
        if config.align is None:
            raise ArtifactError(f"{path}/config.yaml has no align section: not an aligned model")
        recorded = read_part(path / "encoders.json", read_json)
        state = read_part(path / "model.safetensors", load_file)
        encoders = build_align_encoders(config)
        for modality, encoder in encoders.items():
            info = recorded.get(modality) or {}
            encoder.load_extra_state(info.get("extra_state", {}))
            encoder.set_trainable(False)
            prefix = f"encoders.{modality}."
            if info.get("stored"):
                encoder.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
            if not encoder.matches_fingerprint(info.get("fingerprint")):
                raise ArtifactError(f"the {modality} encoder rebuilt from {path} has fingerprint {encoder.fingerprint()}, "
                                    f"the model was trained with {info.get('fingerprint')}: different weights or "
                                    "preprocessing")
        model = cls(config, encoders)
        heads = {k[len("heads."):]: v for k, v in state.items() if k.startswith("heads.")}
        try:
            model.heads.load_state_dict(heads)
        except RuntimeError as error:
            raise ArtifactError(f"{path}/model.safetensors does not fit its config.yaml: {error}") from None
        return model.eval()
