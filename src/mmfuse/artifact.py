"""A trained model as a directory: config.yaml, model.safetensors, labels.json, encoders.json,
metrics.json and a README.md model card. Loading never unpickles anything.

Frozen pretrained encoders are not copied into model.safetensors: they are rebuilt from their
source (package, timm or transformers name) and checked against the recorded fingerprint, so an
artifact is small and a changed backbone is caught instead of silently giving other numbers.
Every other weight is stored, a frozen encoder's random weights included (nothing rebuilds them).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from safetensors.torch import load_file, save

from .atomic import write_atomic
from .config import dump_config, parse_config
from .errors import ArtifactError, MmfuseError, brief
from .metric_format import format_metric, json_safe
from .model import build_encoders, build_model
from .safe_yaml import read_yaml
from .word_substitutes import WordSubstitutes

FILES = ("config.yaml", "model.safetensors", "labels.json", "encoders.json")
SUBSTITUTES = "word_substitutes.json"  # optional: the words training texts use in each place (explain)


# A model directory's kind, by the file only that kind writes: each kind has its own loader and
# commands (a fusion model: Predictor.load; caption: mmfuse.captioning; multitask: mmfuse.multitask).
KIND_MARKERS = {"caption": "caption.json", "multitask": "tasks.json"}


def model_kind(directory: str | Path) -> str:
    """"caption", "multitask" or "fusion" (a Predictor's: classification, multi-label, regression)."""
    path = Path(directory)
    return next((kind for kind, marker in KIND_MARKERS.items() if (path / marker).is_file()), "fusion")


def read_kind_files(path: Path, files: tuple[str, ...], marker: str, version: int, hint: str = "") -> tuple[Any, dict]:
    """(config, the kind's marker JSON) of a caption or multi-task model directory: one
    ArtifactError naming the directory for missing files, or the marker for another format."""
    missing = [name for name in files if not (path / name).is_file()]
    if missing:
        raise ArtifactError(f"{path} is missing {', '.join(missing)}{hint}")
    config = read_config(path / "config.yaml")
    info = read_part(path / marker, read_json)
    if info.get("format") != version:
        raise ArtifactError(f"{path}/{marker}: format {info.get('format')!r}, this mmfuse reads {version}")
    return config, info


def rebuilt_prefixes(model) -> tuple[str, ...]:
    """State-dict prefixes of the encoders that loading rebuilds from their source."""
    return tuple(f"encoders.{m}." for m, e in model.encoders.items() if e.rebuilt_on_load)


def trainable_state(model) -> dict[str, Any]:
    rebuilt = rebuilt_prefixes(model)
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.startswith(rebuilt)}


def encoder_records(model) -> dict[str, Any]:
    """encoders.json: per encoder whether it trained, whether its weights are stored, the
    fingerprint a rebuilt one must match, and its own state (a learned vocabulary)."""
    return {m: {"trainable": e.trainable, "stored": not e.rebuilt_on_load, "fingerprint": e.fingerprint(),
                "extra_state": e.extra_state()} for m, e in model.encoders.items()}


def rebuild_encoders(path: Path, config, recorded: dict[str, Any]) -> dict[str, Any]:
    """The config's encoders set up as encoders.json records them (weights loaded later)."""
    encoders = build_encoders(config)
    for modality, encoder in encoders.items():
        info = recorded.get(modality)
        if info is None:
            raise ArtifactError(f"{path}/encoders.json has no entry for the {modality} encoder")
        encoder.load_extra_state(info["extra_state"])
        encoder.set_trainable(info["trainable"])
        # Older artifacts have no "stored": they stored exactly the trainable encoders.
        encoder.rebuildable = not info.get("stored", info["trainable"])
    return encoders


def load_weights(path: Path, model, config, recorded: dict[str, Any], labels_file: str) -> None:
    """model.safetensors into `model`, every weight but the rebuilt encoders' accounted for, and
    each rebuilt frozen encoder checked against its recorded fingerprint."""
    state = read_part(path / "model.safetensors", load_file)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # tensor shapes differ: another config or label count
        raise ArtifactError(f"{path}/model.safetensors does not fit config.yaml and {labels_file} "
                            f"({brief(error)})") from None
    really_missing = [k for k in result.missing_keys if not k.startswith(rebuilt_prefixes(model))]
    if really_missing or result.unexpected_keys:
        raise ArtifactError(f"{path}/model.safetensors does not fit the config: missing {really_missing[:5]}, "
                            f"unexpected {result.unexpected_keys[:5]}")
    for modality, encoder in model.encoders.items():  # checked once loaded: stored weights count too
        if not encoder.trainable and not encoder.matches_fingerprint(recorded[modality]["fingerprint"]):
            raise ArtifactError(
                f"the frozen {modality} encoder {getattr(config.encoders, modality).name!r} rebuilt here has "
                f"fingerprint {encoder.fingerprint()}, the model was trained with "
                f"{recorded[modality]['fingerprint']}: different weights or preprocessing")


def save_artifact(predictor, directory: str | Path) -> Path:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    model = predictor.model
    # Each file whole or not there: a run killed while saving leaves no truncated file behind.
    write_atomic(out / "config.yaml", dump_config(predictor.config))
    write_atomic(out / "model.safetensors", save(trainable_state(model)))
    write_atomic(out / "labels.json", json.dumps(predictor.labels, indent=1))
    write_atomic(out / "encoders.json", json.dumps(encoder_records(model), indent=1))
    write_atomic(out / "metrics.json", json.dumps(json_safe({"fit": predictor.fit_summary, **predictor.metrics}), indent=2))
    write_atomic(out / "README.md", model_card(predictor))
    if predictor.word_substitutes:
        write_atomic(out / SUBSTITUTES, json.dumps({m: s.places for m, s in predictor.word_substitutes.items()},
                                                   indent=1, sort_keys=True))
    return out


def read_part(file: Path, read: Callable[[Path], Any]) -> Any:
    """read(file), or one ArtifactError naming the file when it is damaged (cut short, random bytes)."""
    try:
        return read(file)
    except MmfuseError:
        raise
    except Exception as error:  # noqa: BLE001 - a damaged file fails in many ways
        raise ArtifactError(f"{file}: unreadable, the model directory is damaged ({brief(error)})") from None


def read_json(file: Path) -> dict[str, Any]:
    value = json.loads(file.read_bytes())
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value


def read_labels(file: Path) -> list[str]:
    labels = json.loads(file.read_bytes())
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise ValueError("expected a JSON list of label strings")
    return labels


def read_substitutes(file: Path) -> dict[str, WordSubstitutes]:
    return {modality: WordSubstitutes.from_dict(places) for modality, places in read_json(file).items()}


def read_config(file: Path):
    """A model directory's config.yaml, read with the size and alias budget of every config."""
    return parse_config(read_yaml(file), str(file))


def load_artifact(cls, directory: str | Path):
    path = Path(directory)
    if not path.is_dir():
        raise ArtifactError(f"{path} is not a model directory")
    kind = model_kind(path)
    if kind == "caption":
        raise ArtifactError(f"{path} is a caption model: caption images with `mmfuse caption {path} --image IMAGE` "
                            "(predict, evaluate, explain and serve take classification, multi-label and "
                            "regression models)")
    if kind == "multitask":
        raise ArtifactError(f"{path} is a multi-task model: predict with `mmfuse predict {path} --data TABLE`, "
                            "evaluate with `mmfuse evaluate {path}` (explain, export and serve take single-task models)")
    missing = [name for name in FILES if not (path / name).is_file()]
    if missing:
        raise ArtifactError(f"{path} is missing {', '.join(missing)}; was it written by Predictor.save?")
    config = read_config(path / "config.yaml")
    predictor = cls(config)
    predictor.labels = read_part(path / "labels.json", read_labels)
    recorded = read_part(path / "encoders.json", read_json)
    encoders = rebuild_encoders(path, config, recorded)
    model = build_model(config, len(predictor.labels), encoders)
    load_weights(path, model, config, recorded, "labels.json")
    predictor.model = model.eval()
    metrics_file = path / "metrics.json"
    if metrics_file.is_file():
        saved = read_part(metrics_file, read_json)
        predictor.fit_summary = saved.get("fit", {})
        predictor.metrics = {k: v for k, v in saved.items() if k != "fit"}
    if (path / SUBSTITUTES).is_file():  # older models have none: explain falls back to gradients
        predictor.word_substitutes = read_part(path / SUBSTITUTES, read_substitutes)
    if (path / "onnx" / "manifest.json").is_file():  # written by `mmfuse export`: predict with onnxruntime
        from .export.runner import OnnxRunner

        predictor.runner = OnnxRunner(path)
    return predictor


def check_replaceable(directory: str | Path, config) -> None:
    """Refuse to train into `directory` when it holds a model of other data (another task, table or
    columns): a config that names no output_dir must not overwrite another config's model.
    Retraining on the same data with other settings replaces the model: that is iterating."""
    path = Path(directory)
    if not (path / "config.yaml").is_file():
        return
    try:
        old = read_config(path / "config.yaml")
    except MmfuseError as error:
        differs = [f"its config.yaml is unreadable: {error}"]
    else:
        what = {"task": lambda c: c.task, "data.source": lambda c: c.data.source,
                "data.columns": lambda c: c.data.columns.model_dump(exclude_none=True)}
        differs = [f"{name} {get(old)!r}, this config {get(config)!r}" for name, get in what.items()
                   if get(old) != get(config)]
    if differs:
        raise MmfuseError(f"{path} holds a model trained with another config ({'; '.join(differs)}); "
                          "train into another directory (--output runs/NAME, or output_dir in the config) "
                          f"or remove {path} first")


def model_card(predictor) -> str:
    cfg = predictor.config
    metrics = predictor.metrics.get("metrics", {})
    lines = [
        "# mmfuse model", "",
        f"- task: {cfg.task}, {len(predictor.labels)} labels",
        f"- data: `{cfg.data.source}`",
    ]
    for modality in cfg.modalities():
        spec = getattr(cfg.encoders, modality)
        encoder = predictor.model.encoders[modality]
        lines.append(f"- {modality} encoder: `{spec.name}` ({'trained' if encoder.trainable else 'frozen'}, "
                     f"fingerprint {encoder.fingerprint()})")
    lines.append(f"- fusion: `{cfg.fusion.name}` (dim {cfg.fusion.dim}, options {cfg.fusion.options or {}})")
    weights = predictor.model.fusion.modality_weights()
    if weights:
        lines.append("- learned modality weights: " + ", ".join(f"{m} {w:.3f}" for m, w in weights.items()))
    fit = predictor.fit_summary
    if fit:
        lines.append(f"- training: {fit.get('epochs')} epochs in {fit.get('train_seconds', 0):.0f} s")
    if predictor.config.privacy.mask_pii:  # how many values of each kind, never the values
        masked = fit.get("personal_data_masked") or {}
        lines.append("- personal data masked in the texts before training: "
                     + (", ".join(f"{kind} {n}" for kind, n in sorted(masked.items())) or "none found"))
    if metrics:
        title = predictor.metrics.get("title", "Test split")  # the validation split when there is no test split
        lines += ["", f"## Metrics: {title}", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {format_metric(v)} |" for k, v in metrics.items()]
    contribution = predictor.metrics.get("modality_contribution")
    if contribution:
        lines += ["", "## Modality contribution", "", "| inputs | value |", "|---|---|"]
        lines += [f"| {k.replace('_', ' ')} | {format_metric(v)} |" for k, v in contribution.items()]
    lines += ["", "Load with `mmfuse.Predictor.load(path)`; the full config is in `config.yaml`.", ""]
    return "\n".join(lines)
