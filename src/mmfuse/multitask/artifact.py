"""A trained multi-task model as a directory: config.yaml, model.safetensors (frozen pretrained
encoders rebuilt from their source, as in mmfuse.artifact), tasks.json (each task's type and label
vocabulary), encoders.json and metrics.json. No pickle: safetensors and JSON only."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save

from ..artifact import (encoder_records, load_weights, model_kind, read_json, read_kind_files, read_part,
                        rebuild_encoders, trainable_state)
from ..atomic import write_atomic
from ..config import Config, dump_config
from ..metric_format import json_safe
from .model import MultiTaskModel, build_multitask_model

FORMAT = 1
FILES = ("config.yaml", "model.safetensors", "tasks.json", "encoders.json")


def is_multitask_model(directory: str | Path) -> bool:
    return model_kind(directory) == "multitask"


def save_multitask(model: MultiTaskModel, config: Config, labels: dict[str, list[str]], directory: str | Path,
                   metrics: dict[str, Any] | None = None) -> Path:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "config.yaml", dump_config(config))
    write_atomic(out / "model.safetensors", save(trainable_state(model)))
    tasks = {t.name: {"type": t.type, "labels": labels[t.name]} for t in config.multitask.tasks}
    write_atomic(out / "tasks.json", json.dumps({"format": FORMAT, "tasks": tasks}, indent=1))
    write_atomic(out / "encoders.json", json.dumps(encoder_records(model), indent=1))
    write_atomic(out / "metrics.json", json.dumps(json_safe(metrics or {}), indent=2))
    return out


def load_multitask(directory: str | Path) -> tuple[MultiTaskModel, Config, dict[str, list[str]]]:
    """(model in eval mode, its config, each task's labels); one ArtifactError naming the file when wrong."""
    path = Path(directory)
    config, info = read_kind_files(path, FILES, "tasks.json", FORMAT,
                                   "; was it written by a multi-task training run?")
    labels = {name: list(task["labels"]) for name, task in info["tasks"].items()}
    recorded = read_part(path / "encoders.json", read_json)
    model = build_multitask_model(config, labels, rebuild_encoders(path, config, recorded))
    load_weights(path, model, config, recorded, "tasks.json")
    return model.eval(), config, labels
