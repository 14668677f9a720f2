"""Run an exported model directory with onnxruntime (CPU): the towers over each modality's unique
inputs, then fusion + head over rows. `Predictor.load` attaches one when the directory has
`onnx/manifest.json`; `predict` / `predict_scores` then go through it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor

from ..data.batching import ModalityColumn, TableDataset
from ..errors import ArtifactError
from .onnx_export import FORMAT, MANIFEST, fusion_inputs, tower_outputs

ONNX_DIR = "onnx"
TOWER_CHUNK = 256    # unique inputs per tower call
FUSION_ROWS = 1024   # rows per fusion call


def is_exported(directory: str | Path) -> bool:
    return (Path(directory) / ONNX_DIR / MANIFEST).is_file()


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def open_session(path: Path, threads: int, expected_inputs: list[str]) -> ort.InferenceSession:
    if not path.is_file():
        raise ArtifactError(f"{path} is missing (listed in {path.parent / MANIFEST})")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # explicit: the default spins one thread per core, per session
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - onnxruntime's Fail, InvalidProtobuf... derive from Exception
        first_line = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise ArtifactError(f"{path} is not a loadable ONNX model: {first_line}") from None
    names = [i.name for i in session.get_inputs()]
    if names != expected_inputs:
        raise ArtifactError(f"{path} takes inputs {names}, {path.parent / MANIFEST} says {expected_inputs}")
    return session


class OnnxRunner:
    def __init__(self, directory: str | Path, threads: int | None = None):
        folder = Path(directory) / ONNX_DIR
        try:
            self.manifest: dict[str, Any] = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError) as error:
            raise ArtifactError(f"{folder / MANIFEST} cannot be read: {error}") from None
        if self.manifest.get("format") != FORMAT:
            raise ArtifactError(f"{folder / MANIFEST}: format {self.manifest.get('format')!r}, expected {FORMAT!r}")
        self.threads = threads or default_threads()
        self.layout: dict[str, dict[str, Any]] = self.manifest["fusion"]["layout"]
        self.towers = {m: open_session(folder / info["file"], self.threads, info["inputs"])
                       for m, info in self.manifest["towers"].items()}
        self.fusion = open_session(folder / self.manifest["fusion"]["file"], self.threads,
                                   fusion_inputs(self.layout))

    # ----- towers -----------------------------------------------------------------------------
    def tower_features(self, modality: str, column: ModalityColumn) -> dict[str, np.ndarray] | None:
        """Features over the column's unique inputs: cached ones as they are, else the ONNX tower."""
        if column.features is not None:  # frozen encoder, read from the feature cache
            f = column.all_features()
            return {"pooled": f.pooled.numpy(), "tokens": None if f.tokens is None else f.tokens.numpy(),
                    "mask": None if f.mask is None else f.mask.numpy()}
        prepared = column.prepared_table()
        if prepared is None:  # no row has this modality
            return None
        session, keys = self.towers[modality], self.manifest["towers"][modality]["inputs"]
        count = len(next(iter(prepared.values())))
        parts = []
        for first in range(0, count, TOWER_CHUNK):
            feed = {k: prepared[k][first : first + TOWER_CHUNK].numpy() for k in keys}
            parts.append(session.run(None, feed))
        names = tower_outputs(self.layout[modality]["tokens"])
        out = {name: np.concatenate([p[i] for p in parts]) for i, name in enumerate(names)}
        return {"pooled": out["pooled"], "tokens": out.get("tokens"), "mask": out.get("mask")}

    # ----- fusion over rows -----------------------------------------------------------------------
    def fusion_feed(self, modality: str, feats: dict[str, np.ndarray] | None, index: Tensor) -> dict[str, np.ndarray]:
        """One modality's fusion inputs for rows `index` (-1: absent; their values are never read)."""
        info, rows = self.layout[modality], len(index)
        present = (index >= 0).numpy()
        if feats is None:
            count = info["token_count"] or 1
            pooled = np.zeros((rows, info["dim"]), np.float32)
            tokens = np.zeros((rows, count, info["dim"]), np.float32)
            mask = np.zeros((rows, count), bool)
        else:
            safe = np.where(present, index.numpy(), 0)
            pooled, tokens, mask = feats["pooled"][safe], None, None
            if info["tokens"]:
                tokens = feats["tokens"][safe]
                mask = np.ones(tokens.shape[:2], bool) if feats["mask"] is None else feats["mask"][safe]
        feed = {f"{modality}_pooled": pooled, f"{modality}_present": present}
        if info["tokens"]:
            feed |= {f"{modality}_tokens": tokens, f"{modality}_mask": mask}
        return feed

    def outputs(self, dataset: TableDataset) -> Tensor:
        """Raw head outputs for every row of `dataset`, in row order (like evaluate.predict_outputs)."""
        feats = {m: self.tower_features(m, dataset.columns[m]) if m in dataset.columns else None
                 for m in self.layout}
        rows = len(dataset)
        parts = []
        for first in range(0, rows, FUSION_ROWS):
            feed = {}
            for modality in self.layout:
                column = dataset.columns.get(modality)
                index = (column.index[first : first + FUSION_ROWS] if column is not None
                         else torch.full((min(FUSION_ROWS, rows - first),), -1))
                feed |= self.fusion_feed(modality, feats[modality], index)
            parts.append(self.fusion.run(None, feed)[0])
        if not parts:
            return torch.empty(0)
        return torch.from_numpy(np.concatenate(parts))
