"""A MultimodalModel as ONNX graphs: one tower per modality, and fusion + head.

Towers take what the encoder's `prepare` gives (uint8 pixels, token ids) and return the modality's
features; the fusion graph takes every modality's features (pooled, tokens, mask, present), so it
also runs over cached features. Preprocessing (image decode + resize, tokenizing) stays in Python.

Exporter: `torch.onnx.export(..., dynamo=True)` (torch.export + onnxscript). On torch 2.14 the
legacy TorchScript exporter gave scores 0.04 off PyTorch on the concat fusion and baked the batch
size into nn.MultiheadAttention's reshapes (mult, transformer fail at another batch size); the
dynamo exporter matches to ~1e-7 on all twelve fusions with a dynamic batch and token length.
"""
from __future__ import annotations

import json
import logging
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..encoders.text import HFTextEncoder
from ..features import Features, masked_mean
from ..model import MultimodalModel

MANIFEST = "manifest.json"
FORMAT = "mmfuse-onnx/1"
EXAMPLE_ROWS = 3  # > 1: torch.export specialises dimensions of size 0 and 1


def tower_file(modality: str) -> str:
    return f"{modality}.onnx"


FUSION_FILE = "fusion.onnx"


def tower_outputs(has_tokens: bool) -> list[str]:
    return ["pooled", "tokens", "mask"] if has_tokens else ["pooled"]


def fusion_inputs(layout: dict[str, dict[str, Any]]) -> list[str]:
    """Input names of the fusion graph: per modality pooled, [tokens, mask,] present."""
    names = []
    for modality, info in layout.items():
        parts = ["pooled", "tokens", "mask", "present"] if info["tokens"] else ["pooled", "present"]
        names += [f"{modality}_{part}" for part in parts]
    return names


def encoder_features(encoder: nn.Module, prepared: dict[str, Tensor]) -> Features:
    """encoder(prepared), except for transformers text encoders.

    HFTextEncoder trims trailing all-padding columns with a data-dependent length (int(...)),
    which an exported graph would freeze to the example's length. Padding is masked in attention
    and pooling, so running untrimmed gives the same features.
    """
    if not isinstance(encoder, HFTextEncoder):
        return encoder(prepared)
    mask = prepared["attention_mask"]
    states = encoder.loaded_model()(input_ids=prepared["input_ids"], attention_mask=mask).last_hidden_state
    return Features(pooled=masked_mean(states, mask.bool()), tokens=states, mask=mask.bool())


class TowerGraph(nn.Module):
    """One encoder: prepared tensors (in `keys` order) -> pooled [, tokens, mask]."""

    def __init__(self, encoder: nn.Module, keys: list[str], tokens: bool = True):
        super().__init__()
        self.encoder, self.keys, self.tokens = encoder, keys, tokens

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        feats = encoder_features(self.encoder, dict(zip(self.keys, inputs)))
        if feats.tokens is None or not self.tokens:
            return (feats.pooled,)
        return feats.pooled, feats.tokens, feats.mask


class FusionGraph(nn.Module):
    """Fusion + head over flat feature tensors (ordered as `fusion_inputs(layout)`) -> head outputs."""

    def __init__(self, model: MultimodalModel, layout: dict[str, dict[str, Any]]):
        super().__init__()
        self.model, self.fusion, self.head, self.layout = model, model.fusion, model.head, layout

    def forward(self, *inputs: Tensor) -> Tensor:
        remaining = iter(inputs)
        feats = {}
        for modality, info in self.layout.items():
            pooled = next(remaining)
            tokens, mask = (next(remaining), next(remaining)) if info["tokens"] else (None, None)
            feats[modality] = Features(pooled, tokens, mask, next(remaining))
        return self.head(self.fusion(self.model.scale(feats)))


def example_values(modality: str, encoder: nn.Module) -> list[Any]:
    """Raw inputs to trace with: the modality's own example inputs, decoded (of several sizes)."""
    import tempfile

    from ..config import DataConfig
    from ..modalities import MODALITIES

    spec = MODALITIES[modality]
    with tempfile.TemporaryDirectory() as folder:
        return spec.load([spec.example_file(Path(folder), i) for i in range(EXAMPLE_ROWS)], DataConfig())


@contextmanager
def quiet_logging(level: int = logging.ERROR):
    """Raise the root logger's level for a while: the exporter (onnxscript, onnx_ir) and
    onnxruntime's quantizer log dozens of INFO lines per graph through it under `mmfuse` (INFO)."""
    root = logging.getLogger()
    before = root.level
    root.setLevel(max(level, before))
    try:
        yield
    finally:
        root.setLevel(before)


def _export(module: nn.Module, args: tuple[Tensor, ...], path: Path, input_names: list[str],
            output_names: list[str], dynamic: list[dict[int, Any]]) -> None:
    # forward(*inputs): torch.export sees one varargs parameter, hence the shapes nested in a 1-tuple.
    with warnings.catch_warnings(), quiet_logging():
        warnings.simplefilter("ignore")  # torch.export deprecation chatter, not ours to fix
        torch.onnx.export(module, args, str(path), input_names=input_names, output_names=output_names,
                          dynamic_shapes=(tuple(dynamic),), dynamo=True, external_data=False, verbose=False)


@torch.no_grad()
def export_graphs(model: MultimodalModel, folder: Path) -> dict[str, Any]:
    """Write `<modality>.onnx` towers and `fusion.onnx` into `folder`; return the manifest.

    Batch is dynamic everywhere; a 2-D prepared input (token ids) has a dynamic length, and so do
    the tokens of its tower.
    """
    model = model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch")
    towers, layout, fusion_args, fusion_dynamic = {}, {}, [], []
    for modality, encoder in model.encoders.items():
        prepared = encoder.prepare(example_values(modality, encoder))
        keys = list(prepared)
        variable = any(prepared[k].dim() == 2 for k in keys)  # token ids: their length varies
        length = torch.export.Dim(f"{modality}_length") if variable else None
        dynamic = [{0: batch, 1: length} if prepared[k].dim() == 2 else {0: batch} for k in keys]
        feats = encoder_features(encoder, prepared)
        # Tokens only where the fusion reads them (FiLM reads the context's pooled vector only).
        has_tokens = feats.tokens is not None and modality in model.fusion.token_modalities()
        _export(TowerGraph(encoder, keys, has_tokens), tuple(prepared[k] for k in keys), folder / tower_file(modality),
                input_names=keys, output_names=tower_outputs(has_tokens), dynamic=dynamic)
        towers[modality] = {"file": tower_file(modality), "inputs": keys}
        layout[modality] = {"dim": feats.dim, "tokens": has_tokens,
                            "token_count": None if variable or not has_tokens else feats.tokens.shape[1]}
        present = torch.arange(EXAMPLE_ROWS) != 1  # one absent row in the example
        if has_tokens:
            token_axis = {0: batch, 1: length if variable else torch.export.Dim.STATIC}
            fusion_args += [feats.pooled, feats.tokens, feats.mask, present]
            fusion_dynamic += [{0: batch}, token_axis, token_axis, {0: batch}]
        else:
            fusion_args += [feats.pooled, present]
            fusion_dynamic += [{0: batch}, {0: batch}]
    _export(FusionGraph(model, layout), tuple(fusion_args), folder / FUSION_FILE,
            input_names=fusion_inputs(layout), output_names=["output"], dynamic=fusion_dynamic)
    return {"format": FORMAT, "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
            "towers": towers, "fusion": {"file": FUSION_FILE, "layout": layout}, "quantized": None}


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
