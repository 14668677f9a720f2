"""Training a captioner with Lightning: teacher forcing, AdamW, one-cycle or cosine; greedy captions
of the validation images pick the checkpoint, by CIDEr-D or (caption.monitor: factual, for images
whose scenes are known) by factual accuracy; seeded.

Batches are made of images: `train.batch_size` images and `caption.captions_per_step` of their
captions (drawn anew each step; 0: all), each image encoded once however many captions it has.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor
from torch.utils.data import DataLoader

from ..config import CaptionConfig, Config, TrainConfig
from ..train import (AtomicCheckpointIO, EpochSummary, SaveOnInterrupt, fit_resumably, optimizer_and_schedule,
                     quiet_lightning, resolve_precision, tensorboard_logger)
from ..data.scene_captions import Scene, factual_accuracy
from ..errors import ConfigError
from .data import CaptionSet, caption_set, read_pairs, split_pairs
from .evaluate import scenes_of, score_captions
from .metrics import cider_d, tokenize
from .model import Captioner, caption_images
from .tokens import PAD, CaptionTokenizer

log = logging.getLogger(__name__)


class ImageBatches(torch.utils.data.Dataset):
    """Item i: image i's pixels and its tokenised captions."""

    def __init__(self, images: CaptionSet, tokenizer: CaptionTokenizer, max_length: int, per_step: int = 0):
        self.pixels = images.pixels
        self.ids = [tokenizer.encode(captions, max_length) for captions in images.captions]
        self.per_step = per_step

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index: int) -> int:
        return index

    def collate(self, indices: list[int]) -> tuple[Tensor, Tensor, Tensor]:
        """(pixels (B, ...), caption ids (N, L) padded, owner (N,): the batch image of each caption)."""
        captions = [self._draw(self.ids[i]) for i in indices]
        width = max(c.shape[1] for c in captions)
        ids = torch.cat([torch.nn.functional.pad(c, (0, width - c.shape[1]), value=PAD) for c in captions])
        owner = torch.arange(len(indices)).repeat_interleave(torch.tensor([len(c) for c in captions]))
        return self.pixels[indices], ids, owner


    def _draw(self, ids: Tensor) -> Tensor:
        """`per_step` of an image's captions at random (torch's generator: seeded by the run)."""
        if not self.per_step or len(ids) <= self.per_step:
            return ids
        return ids[torch.randperm(len(ids))[: self.per_step]]


MONITORED = {"cider": "val_cider", "factual": "val_choice"}


def validation_scenes(val: CaptionSet | None, caption: CaptionConfig) -> list[Scene] | None:
    """The validation images' scenes when caption.monitor is factual; an error when they are unknown."""
    if caption.monitor != "factual" or val is None or not len(val):
        return None
    scenes = scenes_of(val.images)
    if scenes is None:
        raise ConfigError(f"caption.monitor: factual needs validation images whose scenes are known "
                          f"(caption.captions: shape_scenes); {caption.captions} has none: use caption.monitor: cider")
    return scenes


class CaptionTask(L.LightningModule):
    epoch_metrics = ("train_loss", "val_cider", "val_factual")  # what EpochSummary's line shows

    def __init__(self, model: Captioner, train: TrainConfig, steps_per_epoch: int, val: CaptionSet | None,
                 scenes: list[Scene] | None = None):
        """`scenes`: the validation images' scenes; given, factual accuracy picks the checkpoint."""
        super().__init__()
        self.model = model
        self.train_cfg = train
        self.steps_per_epoch = steps_per_epoch
        self.val_references = None if val is None else [[tokenize(c) for c in caps] for caps in val.captions]
        self.val_scenes = scenes
        self.monitor = MONITORED["factual" if scenes is not None else "cider"]
        self._val_candidates: list[str] = []
        self.val_scores: dict[int, dict[str, float]] = {}  # epoch (0-based) -> its validation scores

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], _: int) -> Tensor:
        pixels, ids, owner = batch
        loss = self.model.loss(pixels, ids, owner)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(pixels))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], _: int) -> None:
        pixels, ids, owner = batch
        self.log("val_loss", self.model.loss(pixels, ids, owner), batch_size=len(pixels))
        self._val_candidates += self.model.generate(pixels, beam_size=1)

    def on_validation_epoch_end(self) -> None:
        candidates, self._val_candidates = self._val_candidates, []
        if len(candidates) != len(self.val_references or []):
            return  # a partial pass (Lightning's sanity check is off; nothing else makes one)
        score, _ = cider_d({i: [tokenize(c)] for i, c in enumerate(candidates)},
                           dict(enumerate(self.val_references)))
        self.log("val_cider", score, prog_bar=True)
        self.val_scores[self.current_epoch] = {"val_cider": float(score)}
        if self.val_scenes is not None:
            share, _ = factual_accuracy(candidates, self.val_scenes)
            self.log("val_factual", share, prog_bar=True)
            self.val_scores[self.current_epoch]["val_factual"] = float(share)
            # Many epochs tie on the factual share of 150 images (steps of 1/150); CIDEr-D breaks the
            # tie (closer to the references' phrasing). It is at most 10, so CIDEr-D / (20 n) stays
            # below half a step and never outweighs one more factual caption.
            self.log("val_choice", share + score / (20 * len(candidates)))

    def configure_optimizers(self) -> Any:
        return optimizer_and_schedule(self.model.parameters(), self.train_cfg,
                                      self.train_cfg.epochs * self.steps_per_epoch)


def loader(data: ImageBatches, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, collate_fn=data.collate, generator=generator)


def fit_captioner(model: Captioner, train: CaptionSet, val: CaptionSet | None, config: Config, *,
                  output_dir: str | Path, resume: str | Path | None = None) -> dict[str, Any]:
    """Train `model` in place (ending with the best validation epoch's weights); a summary."""
    cfg, caption = config.train, config.caption or CaptionConfig()
    output_dir = Path(output_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    has_val = val is not None and len(val) > 0
    train_data = ImageBatches(train, model.tokenizer, caption.max_length, caption.captions_per_step)
    train_loader = loader(train_data, cfg.batch_size, True, cfg.seed)
    val_loader = loader(ImageBatches(val, model.tokenizer, caption.max_length), 256, False, cfg.seed) if has_val else None
    task = CaptionTask(model, cfg, len(train_loader), val if has_val else None, validation_scenes(val, caption))
    best = ModelCheckpoint(dirpath=output_dir / "checkpoints", filename="best", monitor=task.monitor if has_val else None,
                           mode="max", save_top_k=1, enable_version_counter=False)
    last = ModelCheckpoint(dirpath=output_dir / "checkpoints", filename="last", monitor=None, save_top_k=1,
                           enable_version_counter=False)
    interrupt = SaveOnInterrupt(output_dir / "checkpoints" / "last.ckpt")
    quiet_lightning()
    trainer = L.Trainer(max_epochs=cfg.epochs, accelerator=cfg.accelerator, devices=1,
                        precision=resolve_precision(config), gradient_clip_val=cfg.grad_clip,
                        callbacks=[best, last, EpochSummary(), interrupt], logger=tensorboard_logger(output_dir, config),
                        enable_progress_bar=cfg.progress_bar, enable_model_summary=False, num_sanity_val_steps=0,
                        log_every_n_steps=max(1, min(10, len(train_loader))), default_root_dir=str(output_dir),
                        plugins=[AtomicCheckpointIO()])
    start = time.perf_counter()
    fit_resumably(trainer, interrupt, task, train_loader, val_loader, resume)
    seconds = time.perf_counter() - start
    chosen = best.best_model_path if has_val and best.best_model_path and cfg.keep == "best" else last.best_model_path
    scores: dict[str, float] = {}
    if chosen:
        state = torch.load(chosen, map_location="cpu", weights_only=True)
        task.load_state_dict(state["state_dict"])
        scores = task.val_scores.get(state["epoch"], {})  # the chosen epoch's (absent for epochs before a resume)
    return {"train_seconds": seconds, "epochs": trainer.current_epoch, "checkpoint": chosen,
            "monitor": "factual" if task.val_scenes is not None else "cider", "chosen_epoch": state["epoch"] + 1 if chosen else None,
            "best_val_cider": scores.get("val_cider"), "best_val_factual": scores.get("val_factual"),
            "tensorboard": trainer.logger.log_dir}


def prepare_data(config: Config, prepare: Callable) -> dict[str, CaptionSet]:
    """train / val / test CaptionSets of the configured captions."""
    caption = config.caption or CaptionConfig()
    manifest = read_pairs(caption.captions, image_root=caption.image_root, data=config.data)
    parts = split_pairs(manifest, caption, config.data)
    return {name: caption_set(frame, prepare, config.data.max_pixels) for name, frame in parts.items()}


def train_captioner(config: Config, *, resume: str | Path | None = None,
                    echo: Callable[[str], None] = print) -> tuple[Captioner, dict[str, Any]]:
    """Read, split, fit the tokenizer on the training captions, train, evaluate the test images (greedy,
    and beam search when caption.beam_size > 1) and save RUN/model. Returns (model, summary)."""
    from .artifact import save_captioner
    from .model import build_image_encoder

    caption = config.caption or CaptionConfig()
    torch.manual_seed(config.train.seed)
    encoder = build_image_encoder(config)
    sets = prepare_data(config, encoder.prepare)
    echo(f"captions: {caption.captions}: " + ", ".join(f"{name} {len(s)} images ({sum(map(len, s.captions))} captions)"
                                                       for name, s in sets.items()))
    tokenizer = CaptionTokenizer.fit(caption.tokenizer, [c for caps in sets["train"].captions for c in caps])
    model = Captioner(encoder, tokenizer, caption)
    run = Path(config.output_dir)
    summary = fit_captioner(model, sets["train"], sets["val"], config, output_dir=run, resume=resume)
    chosen = f"epoch {summary['chosen_epoch']} chosen by val {summary['monitor']}: CIDEr-D {summary['best_val_cider']}" + (
        f", factual {summary['best_val_factual']}" if summary["best_val_factual"] is not None else "")
    echo(f"trained {summary['epochs']} epochs in {summary['train_seconds']:.1f} s; {chosen}; weights: {summary['checkpoint']}")
    test = sets["test"]
    if len(test):
        for beam in sorted({1, caption.beam_size}):
            candidates = caption_images(model, test.pixels, beam_size=beam)
            scores = score_captions(candidates, test.captions, test.images)
            summary[f"test_beam{beam}"] = scores
            echo(f"test ({len(test)} images, beam {beam}): " + ", ".join(
                f"{k} {v:.4f}" for k, v in scores.items() if isinstance(v, float)))
    save_captioner(model, config, run / "model", metrics=summary)
    echo(f"caption model saved to {run / 'model'}")
    return model, summary
