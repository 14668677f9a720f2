"""A trained captioner as a directory: config.yaml (the resolved config), model.safetensors (every
weight: the image encoder trained with the decoder), caption.json (the tokenizer's name and the
WordPiece ids of the model's vocabulary) and metrics.json. No pickle: safetensors only."""
from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save

from ..artifact import model_kind, read_kind_files, read_part
from ..atomic import write_atomic
from ..config import Config, dump_config
from ..errors import ArtifactError
from .model import Captioner
from .tokens import CaptionTokenizer

FORMAT = 1
FILES = ("config.yaml", "model.safetensors", "caption.json")


def is_caption_model(directory: str | Path) -> bool:
    return model_kind(directory) == "caption"


def save_captioner(model: Captioner, config: Config, directory: str | Path, metrics: dict | None = None) -> Path:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_atomic(out / "model.safetensors", save(state))
    write_atomic(out / "config.yaml", dump_config(config))
    write_atomic(out / "caption.json", json.dumps({"format": FORMAT, **model.tokenizer.state()}, indent=1))
    write_atomic(out / "metrics.json", json.dumps(metrics or {}, indent=1, default=float))
    return out


def load_captioner(directory: str | Path) -> tuple[Captioner, Config]:
    """(model in eval mode, its config); one ArtifactError naming the directory or file when wrong."""
    path = Path(directory)
    if not is_caption_model(path):
        raise ArtifactError(f"{path} is not a caption model directory (no caption.json)")
    config, info = read_kind_files(path, FILES, "caption.json", FORMAT)
    model = Captioner.build(config, CaptionTokenizer(info["tokenizer"], info["pieces"]))
    state = read_part(path / "model.safetensors", load_file)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ArtifactError(f"{path}/model.safetensors does not fit config.yaml and caption.json "
                            f"({str(error).splitlines()[0]})") from None
    return model.eval(), config
