"""ModelRunner: validated rows -> scores and fused vectors, one forward pass per batch.

Runs in the model thread only (the batcher's single-thread executor), so the Predictor is never
used by two threads at once.

The served path skips what `Predictor.predict_scores` does for an arbitrary table and a served
batch does not need: the rows were vetted by the server (decoded files, clean texts), so they go
straight into the manifest frame after the same per-value checks a table gets with the model's
own data settings (`Modality.parse` / `check`; a row they refuse is answered with the reason,
`data.strict` or not), and the batch is one forward pass of the model, put in eval mode on its
device once at start-up (not once per batch with a DataLoader), with its per-batch CNN folded
(`inference_model`). Requests of one batch that upload the same bytes share one input, encoded
once, as a table's rows naming one file do. The scores are those of the Predictor on the same
inputs up to float rounding (tests/test_serve.py and test_serve_speed.py compare them). A
Predictor with an exported runner (ONNX), or any stand-in object, goes through `predict_scores`.
Rows that ask to be explained are explained after the batch's pass (serve/explanations.py).
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Iterator

import pandas as pd
import torch
from torch import Tensor

from ..data.media import MediaError
from ..modalities import MODALITIES
from ..tasks import create_task
from .errors import invalid
from .explanations import explain
from .feature_lru import FeatureLRU
from .inputs import ModelRow
from .schemas import Explanation


@dataclass
class RowResult:
    scores: Tensor | None          # (labels,) probabilities, or (1,) for regression; None: row refused
    fused: Tensor | None = None    # the head's input (the fused representation)
    problem: str | None = None     # why the Predictor refused the row
    explanation: Explanation | None = None  # asked for by the row (explain_until) and explainable


class ModelRunner:
    def __init__(self, predictor):
        self.predictor = predictor
        # Requests repeat their inputs (easy-VQA: ~100 distinct questions): keep the frozen
        # encoders' features in memory instead of re-encoding them in every batch.
        predictor.small_request_cache = FeatureLRU()
        self.config = config = predictor.config
        self.task = create_task(config.task)
        self.labels = list(predictor.labels)
        self.modalities = list(config.modalities())
        # A model trained on masked texts saw placeholders ([EMAIL]) where values were: so must its requests.
        self.masks_pii = config.privacy.mask_pii
        # The Predictor reads a list of dicts through the configured column names (a built-in data
        # set's own names are for its own table); a modality bound only by a built-in falls back
        # to that name.
        columns, resolved = config.data.columns, config.data.resolved_columns()
        self.column = {m: getattr(columns, m) or resolved[m] for m in self.modalities}
        # What the encoders look at (image_size, max_tokens, ...): uploads are decoded no larger
        # than the model needs (ImageModality.from_upload).
        self.encoder_options = {key: value for m in self.modalities
                                for key, value in MODALITIES[m].encoder_options(getattr(config.encoders, m)).items()}

        from ..predictor import Predictor

        # A real Predictor with its torch model (not an exported runner, not a stand-in object
        # that wraps predict_scores).
        self.direct = (isinstance(predictor, Predictor) and isinstance(predictor.model, torch.nn.Module)
                       and getattr(predictor, "runner", None) is None)
        if self.direct:
            self.device = predictor.device
            predictor.model.eval().to(self.device)  # a served model never trains: once, not per batch
            self.model = inference_model(predictor.model)
        # mmfuse.explain explains a class with the torch model's gradients.
        self.explains = self.direct and self.task.explainable

    @property
    def summary(self) -> str:
        """What was loaded, for the log."""
        return f"{self.task.name}, {len(self.labels)} labels"

    def __call__(self, rows: list[ModelRow]) -> list[RowResult]:
        results = self._direct(rows) if self.direct else self._via_predict_scores(rows)
        if self.explains:
            for row, result in zip(rows, results):
                if row.explain_until is not None and result.scores is not None:
                    result.explanation = explain(self.predictor, row)
        return results

    def _direct(self, rows: list[ModelRow]) -> list[RowResult]:
        data = self.predictor.config.data
        results: list[RowResult] = [RowResult(None) for _ in rows]
        good: list[int] = []
        columns: dict[str, list] = {m: [] for m in MODALITIES}
        checked: dict[tuple[str, object], str | None] = {}
        same_file: dict[tuple[str, bytes], object] = {}
        for i, row in enumerate(rows):
            try:
                # What the model's own data settings make of each value (a text over the model's
                # max_text_chars is cut, as in `predict`); files are vetted Decoded values already.
                record = {m: MODALITIES[m].parse(row.values.get(m), "", data) for m in self.modalities}
            except MediaError as error:
                results[i].problem = str(error)
                continue
            for m, digest in row.digests.items():
                if record.get(m) is not None:  # one upload of these bytes stands for all in the batch
                    record[m] = same_file.setdefault((m, digest), record[m])
            if all(value is None for value in record.values()):
                results[i].problem = "no " + " and no ".join(self.modalities)
                continue
            problem = None
            for m, value in record.items():
                if value is not None:
                    if (m, value) not in checked:
                        checked[m, value] = MODALITIES[m].check(value, data)
                    problem = problem or checked[m, value]
            if problem is not None:
                results[i].problem = problem
                continue
            good.append(i)
            for m in MODALITIES:
                columns[m].append(record.get(m))
        if not good:
            return results
        frame = pd.DataFrame({"row": pd.Series([i + 1 for i in good], dtype="int64"),
                              **{m: pd.Series(values, dtype="object") for m, values in columns.items()}})
        model = self.model
        with capture_fused(model) as captured, torch.no_grad():
            dataset = self.predictor._dataset(frame, cache=False)  # frozen encoders: the FeatureLRU
            batch = _to(dataset[list(range(len(good)))], self.device)
            scores = model.head.scores(model(batch).float().cpu())
        fused = captured.vectors(len(good))
        for position, index in enumerate(good):
            results[index] = RowResult(scores[position].reshape(-1), None if fused is None else fused[position])
        return results

    def _via_predict_scores(self, rows: list[ModelRow]) -> list[RowResult]:
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


def inference_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model as the server runs it: the same modules, except that an encoder that runs on
    every batch (trainable, so not served from the FeatureLRU) with Conv2d -> BatchNorm2d pairs is
    replaced by a copy with each pair folded into one convolution (exact in eval mode, up to float
    rounding; the easy-VQA CNN runs 1.1-1.5x faster so on 2 CPU cores) and its convolutions in
    channels-last layout, which oneDNN runs without layout reorders. The Predictor's own model is
    left as it was (it may be trained further)."""
    from ..model import MultimodalModel

    if type(model) is not MultimodalModel:
        return model
    encoders = {m: _folded(encoder) if encoder.trainable else encoder for m, encoder in model.encoders.items()}
    if all(encoders[m] is model.encoders[m] for m in encoders):
        return model
    served = MultimodalModel(encoders, model.fusion, model.head)
    served.scalers = model.scalers  # the fitted statistics, shared
    return served.eval()


def _folded(encoder: torch.nn.Module) -> torch.nn.Module:
    pairs = [(seq, i) for seq in encoder.modules() if isinstance(seq, torch.nn.Sequential)
             for i in range(len(seq) - 1) if _foldable(seq[i], seq[i + 1])]
    if not pairs:
        return encoder
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    encoder = copy.deepcopy(encoder).eval()
    for seq in [seq for seq in encoder.modules() if isinstance(seq, torch.nn.Sequential)]:
        pairs = [i for i in range(len(seq) - 1) if _foldable(seq[i], seq[i + 1])]
        for i in pairs:
            seq[i], seq[i + 1] = fuse_conv_bn_eval(seq[i], seq[i + 1]), torch.nn.Identity()
        if pairs:  # inputs in that layout too, or each convolution converts its input every call
            seq.register_forward_pre_hook(_channels_last)
    return encoder.to(memory_format=torch.channels_last)


def _foldable(conv: torch.nn.Module, norm: torch.nn.Module) -> bool:
    return (type(conv) is torch.nn.Conv2d and type(norm) is torch.nn.BatchNorm2d
            and norm.track_running_stats and norm.running_mean is not None
            and conv.out_channels == norm.num_features)


def _channels_last(module, args):
    if args and isinstance(args[0], Tensor) and args[0].dim() == 4:
        return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
    return None


def _to(batch, device):
    if str(device) == "cpu":
        return batch
    from lightning.fabric.utilities.apply_func import move_data_to_device

    return move_data_to_device(batch, device)


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
