"""Training: a LightningModule around MultimodalModel, and fit_model() that runs Lightning.

Lightning owns the loop: AdamW, warm-up + one-cycle/cosine, checkpoints (best + last), resume,
early stopping, TensorBoard (RUN/logs/version_N: losses, metrics, learning rate, the config as
hyper-parameters), AMP on a GPU, DDP when several devices are given.
"""
from __future__ import annotations

import logging
import math
import signal
import time
import warnings
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins import TorchCheckpointIO
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities.exceptions import SIGTERMException

from .atomic import write_atomic
from .config import Config, TrainConfig
from .data.batching import Batch, TableDataset, make_loader
from .distributed_norm import to_global, to_plain
from .errors import ArtifactError, MmfuseError, brief
from .image_augment import augment_batch
from .model import MultimodalModel
from .semi_supervised import PairedBatch, PseudoLabelling, describe, make_paired_loader

log = logging.getLogger(__name__)

def frozen_prefixes(model: MultimodalModel) -> list[str]:
    """Encoders left out of checkpoints: frozen pretrained ones, which loading rebuilds."""
    return [f"model.encoders.{m}." for m, e in model.encoders.items() if e.rebuilt_on_load]


def optimizer_and_schedule(parameters, cfg: TrainConfig, total_steps: int) -> Any:
    """AdamW with train.schedule (onecycle, cosine with linear warm-up, or constant), stepped per
    batch: what Lightning's configure_optimizers returns, for every model mmfuse trains."""
    optimizer = torch.optim.AdamW(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = max(1, total_steps)
    if cfg.schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total,
                                                        pct_start=max(cfg.warmup_fraction, 0.01))
    elif cfg.schedule == "cosine":
        warm = int(cfg.warmup_fraction * total)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    else:
        return optimizer
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class ModelTraining(L.LightningModule):
    """What training any MultimodalModel shares: frozen encoders kept in eval mode, dropout seeded
    per step, the optimizer and schedule, checkpoints without frozen encoders, DDP loss shares.
    Subclasses give the steps and `monitor` / `mode` (the validation metric that picks the epoch)."""

    monitor: str
    mode: str

    def __init__(self, model: MultimodalModel, config: Config, steps_per_epoch: int):
        super().__init__()
        self.model = model
        self.config = config
        self.steps_per_epoch = steps_per_epoch
        # Frozen pretrained encoders are rebuilt from their source, not stored in checkpoints.
        self.strict_loading = False

    def on_train_epoch_start(self) -> None:
        # Frozen encoders stay in eval mode (BatchNorm statistics, no dropout).
        for encoder in self.model.encoders.values():
            if not encoder.trainable:
                encoder.eval()

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        # Dropout randomness depends only on (seed, epoch, step), not on how many random numbers
        # something else drew (a DataLoader draws one per iterator): a resumed run then repeats
        # an uninterrupted one exactly.
        step = (self.config.train.seed, self.current_epoch, batch_idx)
        # Under DDP each process draws its own masks (the same seed would repeat one mask on every share).
        torch.manual_seed(hash(step if self.trainer.world_size == 1 else (*step, self.global_rank)) % 2**62)

    def training_view(self, batch: Batch) -> Batch:
        """A labelled training batch as the step sees it: modalities dropped (train.modality_dropout)
        and pixels shifted (train.image_augment)."""
        if self.config.train.modality_dropout:
            batch = drop_modalities(batch, self.config.train.modality_dropout)
        if self.config.train.image_augment:
            batch = augment_batch(batch, "weak")
        return batch

    def share_of_global_mean(self, loss: torch.Tensor, rows: int) -> torch.Tensor:
        """Under DDP, weigh this process's mean loss by its share of the batch's rows: DDP averages
        the processes' gradients with equal weights, and the shares differ (an image carries a
        varying number of questions), so the gradient is then that of the whole batch's mean loss."""
        world = self.trainer.world_size
        if world == 1:
            return loss
        total = self.trainer.strategy.reduce(torch.tensor(float(rows), device=loss.device), reduce_op="sum")
        return loss * (rows * world / total)

    def trained_parameters(self) -> list[torch.nn.Parameter]:
        return self.model.trainable_parameters()

    def configure_optimizers(self) -> Any:
        return optimizer_and_schedule(self.trained_parameters(), self.config.train,
                                      self.config.train.epochs * self.steps_per_epoch)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        prefixes = frozen_prefixes(self.model)
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                    if not k.startswith(tuple(prefixes))}


class FusionTask(ModelTraining):
    """One task's head on the fused vector (mmfuse.tasks), optionally with pseudo-labelled rows."""

    def __init__(self, model: MultimodalModel, config: Config, steps_per_epoch: int,
                 semi: PseudoLabelling | None = None):
        super().__init__(model, config, steps_per_epoch)
        self.semi = semi  # semi_supervised: batches pair labelled and unlabelled rows
        task = model.head.task
        self.monitor, self.mode = task.monitor, task.monitor_mode
        # A torchmetrics Metric: its state is reduced over DDP processes, so the monitored value is
        # that of the whole validation split (its state is not saved in checkpoints).
        self.val_metric = task.val_metric(model.head.out_dim)

    def training_step(self, batch: Batch | PairedBatch, _: int) -> torch.Tensor:
        unlabelled = None
        if isinstance(batch, PairedBatch):
            batch, unlabelled = batch.labelled, batch.unlabelled
        batch = self.training_view(batch)
        feats = self.model.encode(batch)
        loss = self.model.head.loss(self.model.head(self.model.fusion(feats)), batch.target)
        if self.model.alignment is not None:
            aligned = self.model.alignment(feats)
            self.log("align_loss", aligned, batch_size=batch.size)
            loss = loss + aligned
        if unlabelled is not None:
            pseudo = self.semi.loss(self.model, unlabelled, self.current_epoch)
            if pseudo is not None:
                self.log("pseudo_label_loss", pseudo, batch_size=unlabelled.size)
                loss = loss + pseudo
        self.log("train_loss", loss, prog_bar=True, batch_size=batch.size)
        return self.share_of_global_mean(loss, batch.size)

    def validation_step(self, batch: Batch, _: int) -> None:
        output = self.model(batch)
        self.log("val_loss", self.model.head.loss(output, batch.target), batch_size=batch.size, sync_dist=True)
        self.val_metric.update(self.model.head.scores(output.detach().float()), batch.target)
        self.log(self.monitor, self.val_metric, on_step=False, on_epoch=True, prog_bar=True, batch_size=batch.size)

    def on_train_epoch_end(self) -> None:
        if self.semi is None:
            return
        reduce = None
        if self.trainer.world_size > 1:
            reduce = lambda t: self.trainer.strategy.reduce(t.to(self.device), reduce_op="sum").cpu()  # noqa: E731
        figures = self.semi.end_epoch(self.current_epoch, reduce)
        self.log_dict({f"semi/{k}": float(v) for k, v in figures.items() if v is not None and k != "epoch"})
        if self.trainer.is_global_zero:
            log.info("%s", describe(figures))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.semi is not None:  # a resumed run reports every epoch's pseudo-label figures
            checkpoint["semi_supervised_history"] = self.semi.history

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.semi is not None:
            self.semi.history = list(checkpoint.get("semi_supervised_history", []))


def drop_modalities(batch: Batch, rates: dict[str, float]) -> Batch:
    """Mark each modality absent on a random `rate` of rows, never leaving a row with nothing."""
    present = {m: part.present for m, part in batch.modalities.items()}
    dropped = {m: (torch.rand(batch.size, device=p.device) < rates.get(m, 0.0)) & p for m, p in present.items()}
    kept_any = torch.stack([present[m] & ~dropped[m] for m in present]).any(0)
    had_any = torch.stack(list(present.values())).any(0)
    restore = had_any & ~kept_any  # these rows would lose everything: keep them whole
    parts = {}
    for m, part in batch.modalities.items():
        keep = present[m] & ~(dropped[m] & ~restore)
        features = None if part.features is None else part.features.with_present(keep)
        parts[m] = replace(part, present=keep, features=features)
    return replace(batch, modalities=parts)


class EpochSummary(Callback):
    """One log line per epoch when the progress bar is off (logs, CI, `make demo`)."""

    def on_train_start(self, trainer, module) -> None:
        # A run resumed from a mid-epoch checkpoint (Ctrl-C, SIGTERM) continues that epoch
        # without calling on_train_epoch_start: its time counts from here.
        self.start = time.perf_counter()

    def on_train_epoch_start(self, trainer, module) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, module) -> None:
        if not trainer.is_global_zero:  # one line per epoch, not one per DDP process
            return
        # A module may name what its line shows (the captioner: both caption metrics); else loss and monitor.
        names = getattr(module, "epoch_metrics", ("train_loss", module.monitor))
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k in names}
        shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        log.info("epoch %d/%d  %s  (%.1f s)", trainer.current_epoch + 1, trainer.max_epochs, shown,
                 time.perf_counter() - self.start)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written beside their target and renamed (Lightning's own go through the system
    temp folder: on another filesystem a kill mid-copy left an empty last.ckpt and an orphan)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        write_atomic(path, lambda handle: torch.save(checkpoint, handle))


class TrainingInterrupted(MmfuseError):
    """Training stopped by a signal after saving a resumable checkpoint; exits with 128 + the signal."""

    def __init__(self, checkpoint: str | Path, signum: int, hint: str = ""):
        self.checkpoint, self.signum, self.exit_code = Path(checkpoint), signum, 128 + signum
        super().__init__(f"training stopped by {signal.Signals(signum).name}; "
                         f"resumable checkpoint saved to {checkpoint}{hint}")


class SaveOnInterrupt(Callback):
    """On SIGTERM (Lightning stops the loop at the next step) or Ctrl+C, save `path` to resume from."""

    def __init__(self, path: Path):
        self.path = path
        self.signum: int | None = None

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            trainer.save_checkpoint(self.path, weights_only=False)  # optimizer and loops too: resumable
            self.signum = signal.SIGTERM if isinstance(exception, SIGTERMException) else signal.SIGINT


def fit_resumably(trainer: L.Trainer, interrupt: SaveOnInterrupt, task: L.LightningModule, train_loader,
                  val_loader, resume: str | Path | None) -> None:
    """trainer.fit (from `resume` if given); a run stopped by SIGTERM or Ctrl+C, after `interrupt`
    saved it, raises TrainingInterrupted naming the checkpoint to resume from."""
    try:
        trainer.fit(task, train_loader, val_loader, ckpt_path=str(resume) if resume else None, weights_only=True)
    except SystemExit:  # how Lightning ends a run on SIGTERM or Ctrl+C
        if interrupt.signum is None:
            raise
        raise TrainingInterrupted(interrupt.path, interrupt.signum) from None


def read_checkpoint(checkpoint: str | Path) -> dict[str, Any]:
    """A training checkpoint's contents; one error naming the file when it is missing, cut short,
    or not a checkpoint (Lightning's own load would end in a traceback that does not name it)."""
    path = Path(checkpoint)
    if not path.is_file():
        raise ArtifactError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        int(state["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])  # what resuming reads
    except Exception as error:  # noqa: BLE001 - a damaged file fails in many ways
        raise ArtifactError(f"{path}: not a readable training checkpoint ({brief(error)})") from None
    return state


def check_fits(state: dict[str, Any], task: "FusionTask", path: str | Path) -> None:
    """One error naming the checkpoint when it was saved from another model (another fusion, size
    or encoder): torch's optimizer would otherwise fail deep inside Lightning with a traceback."""
    skip = tuple(frozen_prefixes(task.model))
    wanted = {k: tuple(v.shape) for k, v in task.state_dict().items() if not k.startswith(skip)}
    stored = {k: tuple(v.shape) for k, v in state.get("state_dict", {}).items() if not k.startswith(skip)}
    differ = sorted(k for k in wanted.keys() & stored.keys() if wanted[k] != stored[k])
    missing, unexpected = sorted(wanted.keys() - stored.keys()), sorted(stored.keys() - wanted.keys())
    if differ or missing or unexpected:
        first = (differ or missing or unexpected)[0].removeprefix("model.")
        raise ArtifactError(f"{path} was saved from another model than this config builds "
                            f"({len(differ)} weights of another shape, {len(missing)} missing, {len(unexpected)} "
                            f"unexpected; first: {first}): resume with the config and --set options it was trained with")


def resumed_epoch(checkpoint: str | Path) -> int:
    """The epoch a run resumed from `checkpoint` starts with (the epochs it had finished)."""
    state = read_checkpoint(checkpoint)
    return int(state["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])


# Lightning's harmless warnings (message patterns): a torch deprecation inside Lightning itself,
# frozen encoders kept in eval mode on purpose (ModelTraining.on_train_epoch_start), no validation.
HARMLESS_WARNINGS = (r".*isinstance\(treespec, LeafSpec\)", r"Found \d+ module\(s\) in eval mode",
                     # a run without a validation split (fit_briefly, a table too small to spare one)
                     r"You defined a `validation_step` but have no `val_dataloader`")


def quiet_lightning() -> None:
    """Only our own lines (epochs, messages): not Lightning's banner ("GPU available", the
    litlogger tip, "`Trainer.fit` stopped"), which its "lightning" logger also prints a second time
    with an "INFO: " prefix. Run after Lightning is imported: importing it resets its loggers to INFO."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


def flat_config(config: Config) -> dict[str, Any]:
    """The config as dotted keys (fusion.name: film): TensorBoard's hyper-parameters table."""
    flat: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict) and value:
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(config.model_dump(mode="json"), "")
    return flat


def tensorboard_logger(run_dir: str | Path, config: Config) -> TensorBoardLogger:
    """RUN/logs/version_N, a new version per run (runs into one folder would draw as one run),
    with the config as its hyper-parameters (also in hparams.yaml)."""
    logger = TensorBoardLogger(str(run_dir), name="logs")
    logger.log_hyperparams(flat_config(config))
    return logger


def resolve_precision(config: Config) -> str:
    if config.train.precision != "auto":
        return config.train.precision
    return "bf16-mixed" if torch.cuda.is_available() and config.train.accelerator != "cpu" else "32-true"


def configure_ddp(strategy: Any, config: Config) -> None:
    """DDP's settings that Lightning takes only from a strategy object, not from a strategy name
    ("auto", "ddp"). Lightning picks the process group backend itself: gloo on a CPU, nccl on a GPU."""
    if not isinstance(strategy, DDPStrategy):
        return
    # A dead or stuck process fails the others at their next collective instead of hanging them.
    strategy._timeout = timedelta(seconds=config.train.ddp_timeout_s)


class DistributedTimeout(MmfuseError):
    """A DDP process waited train.ddp_timeout_s for the others."""


def fit_briefly(module: L.LightningModule, loader, epochs: int) -> None:
    """A short fit on the CPU without checkpoints, loggers or progress bar, for models whose epoch
    takes milliseconds to seconds (the alignment heads, the pruning fine-tune): the same Lightning
    loop and optimizer set-up as fit_model, without what a long run needs."""
    quiet_lightning()
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, use_distributed_sampler=False)
    trainer.fit(module, loader)


def fit_model(model: MultimodalModel, train: TableDataset, val: TableDataset | None, config: Config, *,
              output_dir: str | Path, resume: str | Path | None = None,
              callbacks: Sequence[Callback] = (), unlabelled: TableDataset | None = None,
              truth: torch.Tensor | None = None,
              make_module: Callable[[int], ModelTraining] | None = None,
              lightning_clips: bool = True) -> dict[str, Any]:
    """Train `model` in place (it ends holding the best checkpoint's weights) and return a summary.
    `make_module(steps_per_epoch)`: the LightningModule that trains it (default: FusionTask, one
    task's head; mmfuse.multitask gives its own), whose `monitor` and `mode` pick the epoch.
    `lightning_clips`: False for a module that steps by hand and clips train.grad_clip itself.
    `unlabelled` (semi_supervised): rows trained on with pseudo-labels; `truth`: their hidden labels
    (label positions, -1 unknown), read only for the pseudo-label accuracy."""
    output_dir = Path(output_dir)
    L.seed_everything(config.train.seed, workers=True, verbose=False)
    image = model.encoders["image"] if "image" in model.encoders else None
    if config.train.image_augment and (image is None or not image.trainable):
        log.warning("train.image_augment: no trainable image encoder (a frozen one's features are cached, "
                    "with no pixels to shift): it changes nothing")
    has_val = val is not None and len(val) > 0
    monitor, mode = model.objective()
    # Two checkpoints: the best by the validation metric, and the latest epoch (for --resume).
    # Lightning's save_last only writes when a best checkpoint is written, so "last" is its own callback.
    checkpoint = ModelCheckpoint(dirpath=output_dir / "checkpoints", filename="best",
                                 monitor=monitor if has_val else None, mode=mode, save_top_k=1,
                                 enable_version_counter=False)
    latest = ModelCheckpoint(dirpath=output_dir / "checkpoints", filename="last", monitor=None, save_top_k=1,
                             enable_version_counter=False)
    interrupt = SaveOnInterrupt(output_dir / "checkpoints" / "last.ckpt")
    extra: list[Callback] = [checkpoint, latest, interrupt, *callbacks]
    if not config.train.progress_bar:
        extra.append(EpochSummary())
    if has_val and config.train.early_stopping_patience:
        extra.append(EarlyStopping(monitor=monitor, mode=mode, patience=config.train.early_stopping_patience))
    extra.append(LearningRateMonitor(logging_interval="step"))
    quiet_lightning()
    logger = tensorboard_logger(output_dir, config)
    trainer = L.Trainer(
        max_epochs=config.train.epochs, accelerator=config.train.accelerator, devices=config.train.devices,
        num_nodes=config.train.num_nodes, strategy=config.train.strategy,
        precision=resolve_precision(config), gradient_clip_val=config.train.grad_clip if lightning_clips else None, callbacks=extra,
        logger=logger, enable_progress_bar=config.train.progress_bar, enable_model_summary=False,
        use_distributed_sampler=False, num_sanity_val_steps=0, log_every_n_steps=10,
        default_root_dir=str(output_dir), plugins=[AtomicCheckpointIO()],
    )
    configure_ddp(trainer.strategy, config)
    rank, world = trainer.global_rank, trainer.world_size
    if world > 1:
        to_global(model)  # BatchNorm over the whole batch, not each process's share (undone below)
    # Each process shards the batches by its own rank, read when it iterates (rank=None).
    if unlabelled is not None:
        train_loader = make_paired_loader(train, unlabelled, config)
    else:
        train_loader = make_loader(train, config, shuffle=True, rank=None, world=None)
    val_loader = make_loader(val, config, shuffle=False, rank=None, world=None) if has_val else None
    # At least one logged step per epoch: a small table's curves would otherwise stay empty.
    trainer.log_every_n_steps = max(1, min(10, len(train_loader)))
    semi = None if unlabelled is None else PseudoLabelling(
        config.semi_supervised, num_classes=model.head.out_dim, rows=len(unlabelled),
        steps_per_epoch=len(train_loader), truth=truth, weak_augment=config.train.image_augment,
        labelled_targets=train.target)
    task = (make_module(len(train_loader)) if make_module is not None
            else FusionTask(model, config, steps_per_epoch=len(train_loader), semi=semi))
    if resume:
        check_fits(read_checkpoint(resume), task, resume)
        # Lightning creates the resumed epoch's iterator before it calls set_epoch: set it first.
        train_loader.sampler.set_epoch(resumed_epoch(resume))
    start = time.perf_counter()
    try:
        fit_resumably(trainer, interrupt, task, train_loader, val_loader, resume)
    except RuntimeError as error:
        if world > 1 and "timed out" in str(error).lower():
            raise DistributedTimeout(
                f"DDP process {rank} of {world} waited {config.train.ddp_timeout_s} s (train.ddp_timeout_s) for the "
                f"others: one of them stopped or is stuck (see its output above); {brief(error)}") from None
        raise
    finally:
        to_plain(model)
    seconds = time.perf_counter() - start
    use_best = has_val and checkpoint.best_model_path and config.train.keep == "best"
    best = checkpoint.best_model_path if use_best else latest.best_model_path
    if best:
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        task.load_state_dict(state, strict=False)
    score, last = checkpoint.best_model_score, trainer.callback_metrics.get(monitor)
    summary = {} if semi is None else {"semi_supervised": semi.summary(labelled=len(train))}
    return summary | {"train_seconds": seconds, "epochs": trainer.current_epoch, "best_checkpoint": best,
            "last_checkpoint": latest.best_model_path, "tensorboard": logger.log_dir,
            # DDP: every process ends here with the same weights; only rank 0 writes files after training.
            "processes": world, "rank": rank,
            f"best_{monitor}": None if score is None else float(score),
            f"last_{monitor}": None if last is None else float(last)}
