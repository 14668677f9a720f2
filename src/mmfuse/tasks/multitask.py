"""Several tasks over one table and shared encoders (mmfuse.multitask trains, reports and saves them).

Each listed task is itself a registered task (its head, loss and metrics); this entry names the
runner that builds one head per task and combines their losses.
"""
from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .base import TASKS, Task, register_task


@register_task("multitask")
class MultiTask(Task):
    name = "multitask"
    per_label = False
    monitor, monitor_mode = "val_mean", "max"  # or one task's (multitask.monitor)
    headline, headline_mode = "mean", "max"
    runner = "mmfuse.multitask.run:train_multitask"
    section = "multitask"

    def check_config(self, config: Any) -> None:
        if config.multitask is None:
            raise ConfigError("task multitask: a multitask section listing the tasks is needed")
        for spec in config.multitask.tasks:
            if spec.type in ("caption", "multitask"):
                raise ConfigError(f"multitask.tasks {spec.name!r}: type {spec.type} cannot be one of several heads")
            try:
                TASKS.get(spec.type)
            except ConfigError as error:
                raise ConfigError(f"multitask.tasks {spec.name!r}: {error}") from None
        section = config.multitask
        if section.weighting == "pcgrad" and config.train.precision.startswith("16"):
            raise ConfigError("multitask.weighting: pcgrad steps by hand without fp16 loss scaling: "
                              "use train.precision bf16-mixed or 32-true")
        if section.weighting == "gradnorm" and section.sharing == "soft":
            raise ConfigError("multitask.weighting: gradnorm balances gradients at a shared layer, and soft "
                              "sharing has none (a fusion per task): choose hard or hierarchical sharing")
        if config.train.alignment:
            raise ConfigError("train.alignment: not read with task: multitask (its auxiliary loss is built "
                              "for one head); leave it out")
        from ..multitask.model import objective

        objective(config)  # monitor: mean needs every task's metric to be a higher-is-better one
