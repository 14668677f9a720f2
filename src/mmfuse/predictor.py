"""Predictor: the Python API over the whole pipeline (the CLI calls the same methods).

    p = Predictor(config).fit(train_df, val_df)
    p.evaluate(test_df); p.predict(df); p.save("dir"); Predictor.load("dir")
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch

from .config import ColumnsConfig, Config, DataConfig, load_config, parse_config
from .data.manifest import BadRow, Manifest, load_manifest, split_manifest
from .dataset import build_dataset
from .encoders.cache import FeatureCache
from .errors import ConfigError, DataError, MmfuseError
from .modalities import MODALITIES
from .inference import predict_outputs
from .robustness import LEVELS, NOISES, perturbation
from .semi_supervised import drop_unlabelled, partition, section as semi_section, truth_targets
from .tasks import Task, create_task
from .word_substitutes import WordSubstitutes
from .model import MultimodalModel, build_encoders, build_model

log = logging.getLogger(__name__)
DIRECT_ROWS = 256
MANIFEST_MARK = "mmfuse_manifest"


def mark(frame: pd.DataFrame) -> pd.DataFrame:
    """Tag a frame as validated manifest rows, so it is not read as a user table again."""
    frame.attrs[MANIFEST_MARK] = True
    return frame


def _as_config(config: Config | dict | str | Path | None) -> Config:
    if isinstance(config, Config):
        return config
    if isinstance(config, dict):
        return parse_config(config)
    return load_config(config)


class Predictor:
    def __init__(self, config: Config | dict | str | Path | None = None):
        self.config = _as_config(config)
        self.labels: list[str] = list(self.config.data.labels or [])
        self.model: MultimodalModel | None = None
        self.fit_summary: dict[str, Any] = {}
        # worded modality -> the words its training texts use in each place (explain's edits)
        self.word_substitutes: dict[str, WordSubstitutes] = {}
        self.metrics: dict[str, Any] = {}
        self.bad_rows: list[BadRow] = []
        self.runner = None  # an onnxruntime runner when loaded from an exported directory (mmfuse export)
        # Where small requests (<= DIRECT_ROWS) keep frozen-encoder features: None encodes them
        # every time; a server sets an in-memory LRU (mmfuse.serve.feature_lru.FeatureLRU).
        self.small_request_cache = None
        self.pii_masker = None  # privacy.mask_pii: mmfuse.privacy.PiiMasker, with its counts by kind

    # ----- data -----------------------------------------------------------------------------
    def read(self, data: Any, *, labelled: bool = True, columns: dict[str, str | None] | None = None,
             unlabelled: bool = False) -> pd.DataFrame:
        """A table (DataFrame / path / built-in name / list of dicts) -> the manifest frame of good rows.

        `columns` names this table's column for an input or the label ({"text": "question"}),
        or leaves an input out ({"text": None}); the configured names apply to the rest.
        `unlabelled`: rows with an empty label are kept (label None): semi-supervised training rows.
        """
        if isinstance(data, pd.DataFrame) and data.attrs.get(MANIFEST_MARK):
            return data  # already validated (a split of ours)
        bound = self._bind(columns, "evaluating" if labelled else "predicting")
        if isinstance(data, list):
            data = records_frame(data, bound)
        # Only a configured label set (data.labels) makes other labels bad rows; a label the model
        # never saw is kept, and counts as an error (Task.encode), as in training.
        # rebind: a trained model's tables (predict, evaluate) may name their columns per call.
        manifest = self._noted(load_manifest(data, bound, task=self.config.task, modalities=self.config.modalities(),
                                             require_label=labelled, rebind=self.model is not None,
                                             unlabelled=unlabelled))
        for bad in manifest.bad_rows[:20]:
            log.warning("  %s", bad)
        return mark(self._masked(manifest.frame))

    def _noted(self, manifest: Manifest) -> Manifest:
        """The manifest's bad rows logged (summary) and kept in `bad_rows`; with privacy.mask_pii
        their reasons masked first (a reason may quote the value it refuses)."""
        if self.config.privacy.mask_pii and manifest.bad_rows:
            masker = self._pii_masker()
            manifest.bad_rows = [replace(bad, reason=masker.mask(bad.reason)) for bad in manifest.bad_rows]
        if manifest.bad_rows:
            log.warning("%s", manifest.summary())
        self.bad_rows.extend(manifest.bad_rows)
        return manifest

    def _bind(self, columns: dict[str, str | None] | None, doing: str) -> DataConfig:
        """The data section for one table given to this Predictor. Its split column is never read:
        a given table is used whole (only the configured source is split)."""
        bound = self.config.data.columns.model_dump() | {"split": None}
        inputs = self.config.modalities()
        for role, column in (columns or {}).items():
            if role not in (*inputs, "label"):
                raise ConfigError(f"columns: {role!r} is neither an input of this model ({', '.join(inputs)}) "
                                  "nor 'label'")
            if role == "label" and not column:
                raise ConfigError("columns: the label column cannot be left out; name it: label=NAME")
            bound[role] = column or None
            if bound[role] is None and role in inputs:
                log.warning("%s without %s: left out on purpose (columns={'%s': None} / --column %s=)",
                            doing, role, role, role)
        if all(bound[m] is None for m in inputs):
            raise ConfigError(f"columns: every input ({', '.join(inputs)}) is left out; nothing to go by")
        return self.config.data.model_copy(update={"columns": ColumnsConfig(**bound)})

    def splits(self) -> dict[str, pd.DataFrame]:
        """The configured source (and test_source) split into train / val / test."""
        semi = semi_section(self.config)
        manifest = self._noted(load_manifest(self.config.data.source, self.config.data, task=self.config.task,
                                             modalities=self.config.modalities(), unlabelled=semi is not None))
        parts = split_manifest(manifest, self.config.data)
        if semi is not None:
            parts = drop_unlabelled(parts)
        if self.config.data.test_source:
            parts["test"] = self.read(self.config.data.test_source)
        return {name: mark(self._masked(frame)) for name, frame in parts.items()}

    def _pii_masker(self):
        if self.pii_masker is None:
            from .privacy import masker_for

            self.pii_masker = masker_for(self.config.privacy)
        return self.pii_masker

    def _masked(self, frame: pd.DataFrame) -> pd.DataFrame:
        """privacy.mask_pii: personal data masked in every input column as soon as it is read."""
        privacy = self.config.privacy
        if not privacy.mask_pii:
            return frame
        masker = self._pii_masker()
        before = sum(masker.counts.values())
        frame = frame.copy()
        for modality in self.config.modalities():
            if modality in frame:
                frame[modality] = MODALITIES[modality].mask_personal(frame[modality].tolist(), self.pii_masker)
        masked = sum(self.pii_masker.counts.values()) - before
        if masked:  # counts by kind, never the values
            log.info("privacy: masked %d personal value(s) in %d rows (so far: %s)", masked, len(frame),
                     ", ".join(f"{kind} {n}" for kind, n in self.pii_masker.counts.most_common()))
        return frame

    def _dataset(self, frame: pd.DataFrame, *, cache: bool = True, perturb=None):
        assert self.model is not None
        return build_dataset(frame, dict(self.model.encoders), task=self.config.task, labels=self.labels,
                             data=self.config.data,
                             cache=FeatureCache(self.config.cache_dir) if cache else self.small_request_cache,
                             group_by_image=self.config.train.group_by_image, device=self.device,
                             perturb=perturb,
                             pooled_only=set(self.model.encoders) - self.model.fusion.token_modalities(),
                             prepared_memory_mb=self.config.train.prepared_memory_mb)

    @property
    def task(self) -> Task:
        """What the model predicts (mmfuse.tasks): config.task's registered Task."""
        return create_task(self.config.task)

    @property
    def device(self) -> str:
        wants_gpu = self.config.train.accelerator in ("auto", "gpu", "cuda")
        return "cuda" if wants_gpu and torch.cuda.is_available() else "cpu"

    # ----- training -------------------------------------------------------------------------
    def fit(self, train: Any = None, val: Any = None, *, resume: str | Path | None = None,
            callbacks: Sequence[Any] = (), output_dir: str | Path | None = None) -> "Predictor":
        from .train import fit_model

        semi = semi_section(self.config)
        if train is None:
            parts = self.splits()
            train_frame, val_frame = parts["train"], parts["val"] if val is None else self.read(val)
            self._test_frame = parts.get("test")
        else:
            train_frame = self.read(train, unlabelled=semi is not None)
            val_frame = self.read(val) if val is not None else None
        self._val_frame = val_frame  # reported after training when there is no test split
        if len(train_frame) == 0:
            raise MmfuseError("no good training rows left (see the bad rows reported above)")
        if not self.labels:
            self.labels = self.task.label_set(train_frame["label"].dropna())  # unlabelled rows: None
        # Seed before building: the initial weights are part of what a seed must reproduce.
        torch.manual_seed(self.config.train.seed)
        encoders = build_encoders(self.config)
        self.word_substitutes = {}
        for modality, encoder in encoders.items():
            texts = [v for v in train_frame[modality].tolist() if isinstance(v, str)]
            encoder.fit(texts)
            if MODALITIES[modality].worded:
                self.word_substitutes[modality] = WordSubstitutes.fit(texts)
        self.model = build_model(self.config, len(self.labels), encoders)
        unlabelled_set = truth = None
        if semi is not None:
            train_frame, unlabelled_frame = partition(train_frame)
            if len(unlabelled_frame):
                unlabelled_set = self._dataset(unlabelled_frame)
                if semi.truth_column:
                    truth = truth_targets(self.config.data.source if train is None else train, semi.truth_column,
                                          unlabelled_frame["row"], self.labels)
        train_set = self._dataset(train_frame)
        if resume is None:
            self.model.fit_scalers(train_set)  # a resumed run reads them from its checkpoint
        val_set = self._dataset(val_frame) if val_frame is not None and len(val_frame) else None
        for encoder in self.model.encoders.values():
            encoder.release()  # a frozen model has made its features: training reads them from the cache
        self.fit_summary = fit_model(self.model, train_set, val_set, self.config,
                                     output_dir=output_dir or self.config.output_dir, resume=resume,
                                     callbacks=callbacks, unlabelled=unlabelled_set, truth=truth)
        if self.pii_masker is not None:
            self.fit_summary["personal_data_masked"] = dict(self.pii_masker.counts)
        self.model.eval()
        return self

    # ----- evaluation and prediction ------------------------------------------------------------
    def evaluate(self, data: Any = None, *, report_dir: str | Path | None = None,
                 title: str = "Evaluation", columns: dict[str, str | None] | None = None) -> dict[str, Any]:
        """Metrics on `data` (all of it: its split column is not read), or on the test split.
        `columns`: as in `read`."""
        from .evaluate import evaluate_dataset, write_report  # torchmetrics: only when evaluating

        self._need_model()
        frame = self.read(data, columns=columns) if data is not None else self._default_test()
        result = evaluate_dataset(self.model, self._dataset(frame), self.config, self.labels, self.device)
        if report_dir is not None:
            path = write_report(result, report_dir, title=title, labels=self.labels,
                                modality_dropout=self.config.train.modality_dropout)
            if self.task.explainable and self.config.report.gallery:
                from .gallery import gallery_lines

                lines = gallery_lines(self, frame, result["predicted"], path.parent, self.config.report.gallery)
                with path.open("a") as report:
                    report.write("\n".join(lines) + "\n")
        self.metrics = {"metrics": result["metrics"], "modality_contribution": result["modality_contribution"],
                        "rows": result["rows"], "title": title}
        return result

    def _default_test(self) -> pd.DataFrame:
        frame = getattr(self, "_test_frame", None)
        if frame is None:
            frame = self.splits()["test"]
        if frame is None or len(frame) == 0:
            raise MmfuseError("no test rows: pass data, or configure a test split / data.test_source")
        return frame

    def robustness(self, data: Any = None, *, levels: tuple[float, ...] = LEVELS, seed: int = 0) -> pd.DataFrame:
        """The headline metric under graded noise on each modality (one noise at a time).

        Rows: modality, noise, level, metric; level 0 is the clean input.
        """
        from .evaluate import compute_metrics

        self._need_model()
        frame = self.read(data) if data is not None else self._default_test()
        headline = self.task.headline
        rows = []
        for modality in self.model.modalities:
            for noise in NOISES.get(modality, {}):
                for level in levels:
                    dataset = self._dataset(frame, perturb={modality: perturbation(modality, noise, level, seed)})
                    outputs = predict_outputs(self.model, dataset, self.config, self.device)
                    metrics = compute_metrics(outputs, dataset.target, self.labels, self.model.head)[0]
                    rows.append({"modality": modality, "noise": noise, "level": level, headline: metrics[headline]})
        return pd.DataFrame(rows)

    def predict_scores(self, data: Any) -> tuple[pd.DataFrame, torch.Tensor]:
        """(good rows, scores) — probabilities per label, or the regression value."""
        self._need_model()
        frame = self.read(data, labelled=False)
        # Big tables go through the feature cache; a few rows (a served request) are encoded directly.
        dataset = self._dataset(frame.assign(label=None), cache=len(frame) > DIRECT_ROWS)
        if self.runner is not None:
            outputs = self.runner.outputs(dataset)
        else:
            outputs = predict_outputs(self.model, dataset, self.config, self.device)
        return frame, self.model.head.scores(outputs)

    def predict(self, data: Any, *, top_k: int = 3, columns: dict[str, str | None] | None = None) -> pd.DataFrame:
        """One output row per good input row: `row`, `prediction`, and top-k labels with scores.
        Every row bad: an empty frame (the reasons are in `bad_rows`). `columns`: as in `read`."""
        self._need_model()
        frame = self.read(data, labelled=False, columns=columns)
        if frame.empty:
            return pd.DataFrame({"row": pd.Series(dtype="int64"), "prediction": pd.Series(dtype="object")})
        frame, scores = self.predict_scores(frame)
        answers = self.task.answers(scores, self.labels, top_k)
        out = pd.DataFrame({"row": frame["row"].to_numpy(), "prediction": [answer for answer, _ in answers]})
        for k in range(min((len(top) for _, top in answers), default=0)):
            out[f"top{k + 1}"] = [top[k][0] for _, top in answers]
            out[f"top{k + 1}_score"] = [top[k][1] for _, top in answers]
        return out

    def modality_weights(self) -> dict[str, float] | None:
        self._need_model()
        return self.model.fusion.modality_weights()

    def _need_model(self) -> None:
        if self.model is None:
            raise MmfuseError("this Predictor has no trained model: call fit() or Predictor.load(dir)")

    # ----- artifacts ----------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        from .artifact import save_artifact

        self._need_model()
        if self.fit_summary.get("rank", 0) != 0:
            return Path(directory)  # DDP: rank 0 saves the weights every process holds (one writer)
        return save_artifact(self, directory)

    @classmethod
    def load(cls, directory: str | Path) -> "Predictor":
        from .artifact import load_artifact

        return load_artifact(cls, directory)


def records_frame(records: list[dict[str, Any]], data: DataConfig) -> pd.DataFrame:
    """Inputs given one dict each, as a table. A dict without an input's key is an input that
    lacks it (a server request with only an image); a key no column of the model has is refused:
    ignoring it would answer without that input."""
    frame = pd.DataFrame(records)
    columns = data.columns.model_dump()
    read = {c for c in columns.values() if c is not None}
    unknown = [str(key) for key in frame.columns if key not in read]
    inputs = [c for m, c in columns.items() if m in MODALITIES and c is not None]
    if unknown:
        named = ", ".join(f"{role} {column!r}" for role, column in columns.items() if column is not None)
        # The example names an input the dicts lack: most likely the one the unknown key holds.
        lacking = next((m for m, c in columns.items() if c in inputs and c not in frame.columns), "text")
        raise DataError(f"input key {', '.join(map(repr, unknown))} is no column this model reads ({named}); "
                        f"rename the key, or name it for this call: columns={{'{lacking}': {unknown[0]!r}}}")
    return frame.reindex(columns=[*frame.columns, *(c for c in inputs if c not in frame.columns)])

