"""The LightningModule of a multi-task model: each task's loss on the rows that have its label,
combined by the weighting (mmfuse.multitask.weighting); per-task validation metrics (torchmetrics,
reduced over DDP processes) and their mean. PCGrad needs each task's own gradient, so under it the
step is taken by hand (Lightning's manual optimisation); every other weighting is one backward pass."""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from ..config import Config
from ..data.batching import Batch
from ..tasks import create_task
from ..errors import ConfigError
from ..train import ModelTraining, optimizer_and_schedule
from .model import MultiTaskModel
from .weighting import Weighting

log = logging.getLogger(__name__)


class MultiTaskTraining(ModelTraining):
    def __init__(self, model: MultiTaskModel, config: Config, steps_per_epoch: int, weighting: Weighting):
        super().__init__(model, config, steps_per_epoch)
        self.weighting = weighting
        self.monitor, self.mode = model.objective()
        self.tasks = {t.name: create_task(t.type) for t in config.multitask.tasks}
        self.val_metrics = nn.ModuleDict({name: task.val_metric(model.heads[name].out_dim)
                                          for name, task in self.tasks.items()})
        self.validated: set[str] = set()
        self.automatic_optimization = not weighting.needs_task_gradients
        self.epoch_metrics = ("train_loss", *(f"val_{name}" for name in self.tasks), "val_mean")

    def trained_parameters(self) -> list[nn.Parameter]:
        return self.model.trainable_parameters() + list(self.weighting.parameters())

    def configure_optimizers(self) -> Any:
        # The weighting's own parameters (uncertainty's s_t, GradNorm's w_t) without weight decay:
        # it would pull them off their optimum.
        groups = [{"params": self.model.trainable_parameters()},
                  {"params": list(self.weighting.parameters()), "weight_decay": 0.0}]
        return optimizer_and_schedule([g for g in groups if g["params"]], self.config.train,
                                      self.config.train.epochs * self.steps_per_epoch)

    def on_fit_start(self) -> None:
        if not self.automatic_optimization and self.trainer.world_size > 1:
            raise ConfigError("multitask.weighting: pcgrad steps by hand and does not synchronise gradients over "
                              "DDP processes: train it on one device, or choose another weighting")

    def task_losses(self, outputs: dict[str, Tensor], target: dict[str, tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
        """Each task's mean loss over the rows that have its label (a task without any: left out)."""
        losses = {}
        for name, output in outputs.items():
            values, known = target[name]
            if known.any():
                losses[name] = self.model.heads[name].loss(output[known], values[known])
        return losses

    def connected_zero(self, outputs: dict[str, Tensor]) -> Tensor:
        """0, but reaching every head and weighting parameter: a batch with no label for some task
        still gives each parameter a (zero) gradient, as DDP needs of every process."""
        zero = sum(output.sum() for output in outputs.values()) * 0.0
        return zero + sum((p.sum() * 0.0 for p in self.weighting.parameters()), torch.zeros(()))

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        batch = self.training_view(batch)
        representations, fused = self.model.representations(batch)
        outputs = self.model.outputs(representations)
        losses = self.task_losses(outputs, batch.target)
        for name, value in losses.items():
            self.log(f"train_loss_{name}", value, batch_size=batch.size)
        penalty = self.model.soft_distance()
        extra = self.connected_zero(outputs) + (0.0 if penalty is None else self.config.multitask.soft_penalty * penalty)
        if not self.automatic_optimization:
            return self.gradient_surgery_step(losses, extra, batch, batch_idx)
        loss = self.weighting.combine(losses, fused) + extra
        self.log("train_loss", loss, prog_bar=True, batch_size=batch.size)
        return self.share_of_global_mean(loss, batch.size)

    def gradient_surgery_step(self, losses: dict[str, Tensor], extra: Tensor, batch: Batch, batch_idx: int) -> None:
        """PCGrad: projected task gradients on the shared parameters, plain ones elsewhere."""
        optimizer = self.optimizers()
        optimizer.zero_grad()
        shared = [p for p in self.model.shared_parameters() if p.requires_grad]
        total = self.weighting.combine(losses) + extra
        if shared and len(losses) > 1:
            projected = self.weighting.shared_gradient(losses, shared, seed=hash((self.current_epoch, batch_idx)))
            taken = {id(p) for p in shared}
            others = [p for p in self.trained_parameters() if id(p) not in taken]
            if others:
                torch.autograd.backward(total, inputs=others)
            for parameter, gradient in zip(shared, projected):
                parameter.grad = gradient
        else:  # nothing shared (soft sharing over frozen encoders) or one task: nothing to project
            total.backward()
        if self.config.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.trained_parameters(), self.config.train.grad_clip)
        optimizer.step()
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        self.weighting.after_step()
        self.log("train_loss", total, prog_bar=True, batch_size=batch.size)

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        if self.automatic_optimization:
            self.weighting.after_step()

    def on_train_epoch_end(self) -> None:
        self.log_dict({f"weight_{name}": value for name, value in self.weighting.current().items()})

    def validation_step(self, batch: Batch, _: int) -> None:
        outputs = self.model(batch)
        losses = self.task_losses(outputs, batch.target)
        if losses:
            self.log("val_loss", sum(losses.values()), batch_size=batch.size, sync_dist=True)
        for name, output in outputs.items():
            values, known = batch.target[name]
            if known.any():
                self.val_metrics[name].update(self.model.heads[name].scores(output[known].detach().float()), values[known])
                self.validated.add(name)

    def on_validation_epoch_end(self) -> None:
        values = {}
        for name, metric in self.val_metrics.items():
            if name in self.validated or self.trainer.world_size > 1:  # compute() reduces over processes
                values[name] = float(metric.compute())
            metric.reset()
        self.validated.clear()
        self.log_dict({f"val_{name}": value for name, value in values.items()})
        if values:
            self.log("val_mean", sum(values.values()) / len(values), prog_bar=True)
