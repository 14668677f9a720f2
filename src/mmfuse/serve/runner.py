"""ModelRunner: validated rows -> scores and fused vectors, one Predictor call per batch.

Runs in the model thread only (the batcher's single-thread executor), so the Predictor is never
used by two threads at once.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

from ..modalities import MODALITIES
from .errors import invalid
from .feature_lru import FeatureLRU
from .inputs import ModelRow


@dataclass
class RowResult:
    scores: Tensor | None          # (labels,) probabilities, or (1,) for regression; None: row refused
    fused: Tensor | None = None    # the head's input (the fused representation)
    problem: str | None = None     # why the Predictor refused the row


class ModelRunner:
    def __init__(self, predictor):
        self.predictor = predictor
        # Requests repeat their inputs (easy-VQA: ~100 distinct questions): keep the frozen
        # encoders' features in memory instead of re-encoding them in every batch.
        predictor.small_request_cache = FeatureLRU()
        config = predictor.config
        self.task = config.task
        self.labels = list(predictor.labels)
        self.modalities = list(config.modalities())
        # The Predictor reads a list of dicts through the configured column names (a built-in data
        # set's own names are for its own table); a modality bound only by a built-in falls back
        # to that name.
        columns, resolved = config.data.columns, config.data.resolved_columns()
        self.column = {m: getattr(columns, m) or resolved[m] for m in self.modalities}
        # What the encoders look at (image_size, max_tokens, ...): uploads are decoded no larger
        # than the model needs (ImageModality.from_upload).
        self.encoder_options = {key: value for m in self.modalities
                                for key, value in MODALITIES[m].encoder_options(getattr(config.encoders, m)).items()}

    def __call__(self, rows: list[ModelRow]) -> list[RowResult]:
        table = [{self.column[m]: value for m, value in row.values.items() if m in self.column} for row in rows]
        with capture_fused(getattr(self.predictor, "model", None)) as captured:
            frame, scores = self.predictor.predict_scores(table)
        problems = {bad.row: bad.reason for bad in self.predictor.bad_rows}
        self.predictor.bad_rows.clear()  # the Predictor accumulates these; a server must not
        fused = captured.vectors(len(rows))
        results: list[RowResult] = [RowResult(None, problem=problems.get(i + 1, "refused")) for i in range(len(rows))]
        for position, row_number in enumerate(frame["row"].tolist()):
            index = row_number - 1
            results[index] = RowResult(scores[position].reshape(-1),
                                       None if fused is None else fused[position])
        return results


class _Captured:
    """Head inputs of the forward passes inside one predict call, put back in row order."""

    def __init__(self) -> None:
        self.rows: list[Tensor] = []
        self.fused: list[Tensor] = []
        self.available = False

    def vectors(self, count: int) -> Tensor | None:
        if not self.available or not self.fused or len(self.rows) != len(self.fused):
            return None
        order = torch.argsort(torch.cat(self.rows))
        return torch.cat(self.fused)[order].float()


@contextlib.contextmanager
def capture_fused(model) -> Iterator[_Captured]:
    """Record what the model's head receives, with the batch's row numbers.

    Hooks rather than a second code path: the vectors are exactly those behind the scores. A
    model without a torch head (an exported ONNX runner) yields no vectors.
    """
    captured = _Captured()
    head = getattr(model, "head", None)
    if not isinstance(model, torch.nn.Module) or not isinstance(head, torch.nn.Module):
        yield captured
        return
    captured.available = True

    def on_model(module, args):
        captured.rows.append(args[0].rows.detach().cpu())

    def on_head(module, args):
        captured.fused.append(args[0].detach().cpu())

    handles = [model.register_forward_pre_hook(on_model), head.register_forward_pre_hook(on_head)]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def refused(field: str, result: RowResult):
    return invalid(field, result.problem or "the model refused this row")
