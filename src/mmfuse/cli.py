"""The `mmfuse` command line (typer). User errors print one line and exit 2, without a traceback."""
from __future__ import annotations

import contextlib
import inspect
import logging
import os
import shlex
import sys
import typing
from pathlib import Path
from typing import Any, Optional

import typer

from .errors import MmfuseError
from .metric_format import format_metric

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Multimodal fusion models (images, text, speech): train, evaluate, predict, check data.")
data_app = typer.Typer(no_args_is_help=True, help="Look at a table before training on it.")
app.add_typer(data_app, name="data")

SET_HELP = "Override a config field: --set fusion.name=concat (repeatable)."
BACKEND_HELP = "Where the work runs: local (this machine, as always) or ray (docs/distributed.md)."
ADDRESS_HELP = ("With --backend ray: a running Ray cluster's address (`ray start --head` prints it); default "
                "$RAY_ADDRESS, else a local Ray started for this command and stopped after it.")
CPUS_HELP = ("With --backend ray: CPUs (and torch threads) each cell or trial takes, as a Ray task (default 1). "
             "Encoder actors take as many as this process's torch threads.")
COLUMN_HELP = ("This table's column for an input or the label: --column text=question; "
               "--column text= goes without text (repeatable).")


def parse_columns(items: list[str]) -> dict[str, str | None]:
    """--column ROLE=NAME pairs; an empty NAME leaves the input out."""
    columns: dict[str, str | None] = {}
    for item in items:
        role, equals, column = item.partition("=")
        if not equals or not role.strip():
            raise MmfuseError(f"--column {item!r}: expected ROLE=COLUMN (text=question), or ROLE= to go without it")
        columns[role.strip()] = column.strip() or None
    return columns


def print_metrics(title: str, metrics: dict[str, float], contribution: dict[str, float] | None = None) -> None:
    typer.echo(f"\n{title}")
    width = max(len(k) for k in metrics)
    for key, value in metrics.items():
        typer.echo(f"  {key:<{width}}  {format_metric(value)}")
    if contribution:
        typer.echo("  modality contribution: " + ", ".join(f"{k.replace('_', ' ')} {format_metric(v)}"
                                                          for k, v in contribution.items()))


def tensorboard_line(log_dir: str) -> str:
    return f"TensorBoard logs: {log_dir} (tensorboard --logdir {Path(log_dir).parent})"


@app.command()
def train(
    config: Path = typer.Argument(..., help="YAML config (see configs/)."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    resume: Optional[Path] = typer.Option(None, help="Resume from a checkpoint (e.g. RUN/checkpoints/last.ckpt)."),
    strict: bool = typer.Option(False, help="Fail on any bad row instead of skipping and counting it."),
    output: Optional[Path] = typer.Option(None, help="Run directory (default: output_dir from the config)."),
) -> None:
    """Train a fusion model, save it to RUN/model, and evaluate it on the test split if there is one."""
    from .config import load_config

    overrides = list(set_) + (["data.strict=true"] if strict else []) + ([f"output_dir={output}"] if output else [])
    cfg = load_config(config, overrides)  # before the heavy imports: a bad config fails at once
    from .artifact import check_replaceable
    from .predictor import Predictor
    from .tasks import create_task, task_runner
    from .train import TrainingInterrupted, read_checkpoint

    run = Path(cfg.output_dir)
    check_replaceable(run / "model", cfg)  # before training: an hour's run must not end in this error
    if resume is not None:
        read_checkpoint(resume)  # a bad checkpoint fails before any data is read
    try:
        runner = task_runner(create_task(cfg.task))
        if runner is not None:  # a task with its own kind of model: captions, several tasks
            runner(cfg, resume=resume, echo=typer.echo)
            return
        predictor = Predictor(cfg).fit(resume=resume)
    except TrainingInterrupted as stop:
        again = ["mmfuse", "train", str(config), *(part for item in set_ for part in ("--set", item)),
                 *(["--strict"] if strict else []), *(["--output", str(output)] if output else []),
                 "--resume", str(stop.checkpoint)]
        raise TrainingInterrupted(stop.checkpoint, stop.signum, f"; resume with: {shlex.join(again)}") from None
    fit = predictor.fit_summary
    if fit.get("rank", 0) != 0:  # DDP: rank 0 evaluates and saves the model all processes trained
        return
    kept = "last epoch" if cfg.train.keep == "last" else "best validation epoch"
    typer.echo(f"trained {fit['epochs']} epochs in {fit['train_seconds']:.1f} s; weights of the {kept}: "
               f"{fit['best_checkpoint']}")
    typer.echo(tensorboard_line(fit["tensorboard"]))
    test = getattr(predictor, "_test_frame", None)
    val = getattr(predictor, "_val_frame", None)
    if test is not None and len(test):
        result = predictor.evaluate(test, report_dir=run / "model" / "report", title="Test split")
        print_metrics(f"test ({result['rows']} rows)", result["metrics"], result["modality_contribution"])
    else:
        typer.echo(f"\nno test split: set data.test_fraction (or data.test_source), or use "
                   f"mmfuse evaluate {run / 'model'} --data TABLE"
                   + ("; the report below is on the validation split, which also chose the best checkpoint"
                      if val is not None and len(val) else ""))
        if val is not None and len(val):
            result = predictor.evaluate(val, report_dir=run / "model" / "report", title="Validation split")
            print_metrics(f"val ({result['rows']} rows)", result["metrics"], result["modality_contribution"])
    if predictor.bad_rows:
        typer.echo(f"{len(predictor.bad_rows)} bad rows were skipped (run `mmfuse data check` for the list)")
    predictor.save(run / "model")
    typer.echo(f"model saved to {run / 'model'}")


@app.command()
def compare(
    config: Path = typer.Argument(..., help="YAML config (see configs/)."),
    fusions: str = typer.Option(..., help="Fusions to compare, comma-separated (concat,film,late), or 'all'."),
    seeds: int = typer.Option(3, help="Seeds per fusion: train.seed, train.seed + 1, ..."),
    folds: Optional[int] = typer.Option(None, help="K-fold over the train + val rows, grouped by image."),
    out: Optional[Path] = typer.Option(None, help="Results directory (default: OUTPUT_DIR/compare)."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    backend: str = typer.Option("local", help=BACKEND_HELP + " On Ray, cells run as Ray tasks at once."),
    address: Optional[str] = typer.Option(None, help=ADDRESS_HELP),
    cpus_per_task: Optional[float] = typer.Option(None, help=CPUS_HELP),
) -> None:
    """Train each fusion × seed (× fold) in its own process; rank them by the test metric, with their cost."""
    from .backends import check_backend, open_backend
    from .compare import parse_fusions, run_comparison, with_compare_settings
    from .config import load_config

    check_backend(backend, address, cpus_per_task)
    cfg = with_compare_settings(load_config(config, list(set_)), list(set_))
    with open_backend(backend, address=address, cpus_per_task=cpus_per_task, echo=typer.echo) as runner:
        run_comparison(cfg, parse_fusions(fusions), seeds, folds, out or Path(cfg.output_dir) / "compare",
                       echo=typer.echo, backend=runner)


@app.command()
def tune(
    config: Path = typer.Argument(..., help="YAML config with a tune: section (see configs/shape_scenes.yaml)."),
    trials: Optional[int] = typer.Option(None, min=1, help="Finished trials the study ends with (default: "
                                         "tune.trials); run again, it resumes up to this many."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    output: Optional[Path] = typer.Option(None, help="Run directory (default: output_dir from the config)."),
    backend: str = typer.Option("local", help=BACKEND_HELP + " On Ray, trials run as Ray tasks at once."),
    address: Optional[str] = typer.Option(None, help=ADDRESS_HELP),
    cpus_per_task: Optional[float] = typer.Option(None, help=CPUS_HELP),
) -> None:
    """Search the config's tune.space with Optuna, pruning weak trials: RUN/tune holds the study, best.yaml, report.md."""
    from .backends import check_backend, open_backend
    from .config import load_config

    check_backend(backend, address, cpus_per_task)
    cfg = load_config(config, list(set_) + ([f"output_dir={output}"] if output else []))
    from .tune import run_tune
    from .tune.report import markdown_table

    with open_backend(backend, address=address, cpus_per_task=cpus_per_task, echo=typer.echo) as runner:
        result = run_tune(cfg, trials, echo=typer.echo, backend=runner)
    typer.echo("\n" + markdown_table(result["trials"]) + "\n")
    if result["best"] is not None:
        typer.echo(f"best: trial {result['best'].number}; its config: {result['best_config']} "
                   f"(mmfuse train {result['best_config']})")
    typer.echo(f"study: {result['storage']} (run again to resume); report: {result['report']}")


@app.command()
def evaluate(
    model: Path = typer.Argument(..., help="A model directory written by train / Predictor.save."),
    split: str = typer.Option("test", help="Split of the configured data to evaluate: train, val or test."),
    data: Optional[Path] = typer.Option(None, help="Evaluate on this table instead of a split."),
    report: Optional[Path] = typer.Option(None, help="Report directory (default: MODEL/report)."),
    robustness: bool = typer.Option(False, help="Also the metric under graded image and text noise (curves)."),
    columns: list[str] = typer.Option([], "--column", help=COLUMN_HELP + " With --data."),
) -> None:
    """Metrics table, per-class table, confusion matrix and modality contribution -> report.md."""
    from .artifact import model_kind
    from .predictor import Predictor
    from .robustness import robustness_section

    if model_kind(model) == "multitask":  # every task's metrics on the rows labelled for it
        from .multitask.run import evaluate_saved

        if columns or robustness:
            raise MmfuseError(f"{model} is a multi-task model: --column and --robustness are for single-task models")
        evaluate_saved(model, data=data, split=split, echo=typer.echo)
        return
    predictor = Predictor.load(model)
    if data is not None:
        frame = predictor.read(data, columns=parse_columns(columns))  # read once: evaluate and robustness
    else:
        parts = predictor.splits()
        frame = parts.get(split)
        if frame is None or len(frame) == 0:
            val = ", or --split val" if split != "val" and len(parts["val"]) else ""
            raise MmfuseError(f"split {split!r} has no rows; evaluate a table with --data TABLE{val}")
    result = predictor.evaluate(frame, report_dir=report or model / "report", title=f"{model} on {data or split}")
    print_metrics(f"{data or split} ({result['rows']} rows)", result["metrics"], result["modality_contribution"])
    report_dir = report or model / "report"
    if robustness:
        curves = predictor.robustness(frame)
        section = robustness_section(curves, result["headline"], report_dir)
        with open(report_dir / "report.md", "a") as handle:
            handle.write("\n" + section)
        curves.to_csv(report_dir / "robustness.csv", index=False)
        typer.echo(section.split("\n\n![")[0])
    typer.echo(f"report: {report_dir / 'report.md'}")


def _check_single_row(predictor, given: dict[str, Any], alternative: str = "") -> None:
    """One row from `--<modality>` options: at least one given, and only ones the model takes."""
    taken = predictor.model.modalities
    if not given:
        raise MmfuseError("give " + " and/or ".join(f"--{m}" for m in taken) + alternative)
    unused = [m for m in given if m not in taken]
    if unused:
        raise MmfuseError(f"this model takes no {' and no '.join(unused)} (it takes {', '.join(taken)})")


def predict(
    model: Path = typer.Argument(..., help="A model directory."),
    data: Optional[Path] = typer.Option(None, help="A table to predict in batch."),
    out: Optional[Path] = typer.Option(None, help="Write batch predictions here (CSV)."),
    top_k: int = typer.Option(3, help="How many labels with scores to show."),
    columns: list[str] = typer.Option([], "--column", help=COLUMN_HELP + " With --data."),
    **inputs: Any,
) -> None:
    """Predict one row (one option per modality the model takes) or a whole table (--data, --out)."""
    from .multitask.artifact import is_multitask_model
    from .predictor import Predictor

    if is_multitask_model(model):
        return _predict_multitask(model, data, out, columns)
    predictor = Predictor.load(model)
    given = {m: v for m, v in inputs.items() if v is not None}
    if columns and data is None:
        raise MmfuseError("--column names a column of the --data table; the single-row options need none")
    if data is None:
        _check_single_row(predictor, given, ", or --data TABLE")
        bound = predictor.config.data.resolved_columns()
        row = {bound[m]: str(v.resolve()) if isinstance(v, Path) else v for m, v in given.items()}
        with _quiet("mmfuse.predictor"):  # the error below names the bad input as typed
            result = predictor.predict([row], top_k=top_k)
        if result.empty:
            raise MmfuseError("; ".join(f"--{b.field} {shlex.quote(str(given[b.field]))}: {b.reason}"
                                        if b.field in given else b.reason for b in predictor.bad_rows))
        first = result.iloc[0]
        typer.echo(f"prediction: {first['prediction']}")
        for k in range(1, top_k + 1):
            if f"top{k}" in result:
                typer.echo(f"  {first[f'top{k}']:<20} {first[f'top{k}_score']:.4f}")
        return
    result = predictor.predict(data, top_k=top_k, columns=parse_columns(columns))
    _write_predictions(result, out, predictor.bad_rows)


def _write_predictions(result, out: Optional[Path], bad_rows: list) -> None:
    """Predictions as CSV to `out` (or printed), and the skipped bad rows on stderr."""
    if out is None:
        typer.echo(result.to_csv(index=False))
    else:
        result.to_csv(out, index=False)
        typer.echo(f"{len(result)} predictions written to {out}")
    if bad_rows:
        typer.echo(f"{len(bad_rows)} bad rows skipped:", err=True)
        for bad in bad_rows:
            typer.echo(f"  {bad}", err=True)


def _predict_multitask(model: Path, data: Optional[Path], out: Optional[Path], columns: list[str]) -> None:
    """A multi-task model's answers to a table: one column per task."""
    from .multitask.predict import MultiTaskPredictor

    if data is None or columns:
        raise MmfuseError(f"{model} is a multi-task model: predict a table with --data TABLE (its input columns "
                          "named as in training; single-row options and --column are for single-task models)")
    predictor = MultiTaskPredictor(model)
    result = predictor.predict(data)
    _write_predictions(result, out, predictor.bad_rows)


@contextlib.contextmanager
def _quiet(logger: str):
    """Only errors from `logger` while inside."""
    handle = logging.getLogger(logger)
    level = handle.level
    handle.setLevel(logging.ERROR)
    try:
        yield
    finally:
        handle.setLevel(level)


def _with_options(command, extra: list[inspect.Parameter]):
    """`command` with keyword options built at run time (its **kwargs receives them): typer reads
    the signature, so options that come from the registry need no line here."""
    # Annotations resolved here: this module's are strings (postponed), which the signature
    # handed to typer would otherwise carry as they are.
    hints = typing.get_type_hints(command)
    fixed = [p.replace(annotation=hints.get(p.name, p.annotation))
             for p in inspect.signature(command).parameters.values() if p.kind is not p.VAR_KEYWORD]

    def run(**kwargs):
        return command(**kwargs)

    run.__signature__ = inspect.Signature(fixed + extra)
    run.__doc__, run.__name__ = command.__doc__, command.__name__
    return run


def _modality_options() -> list[inspect.Parameter]:
    """One `--<modality>` option per registered modality (a path for file modalities)."""
    from .modalities import MODALITIES

    return [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                              annotation=Optional[Path] if spec.is_file else Optional[str],
                              default=typer.Option(None, help=spec.help + " (single-row prediction)"))
            for name, spec in MODALITIES.items()]


def _limit_options() -> list[inspect.Parameter]:
    """One `--max-...` option per input cap a registered modality declares (server defaults)."""
    from .serve.settings import limit_fields

    return [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind,
                              default=typer.Option(default, help=f"{modality}: {meaning}."))
            for name, (modality, kind, default, meaning) in limit_fields().items()]


app.command("predict")(_with_options(predict, _modality_options()))


def explain(
    model: Path = typer.Argument(..., help="A model directory (a classification model)."),
    out: Path = typer.Option(Path("explanation"), help="Folder for explanation.json and <modality>_heatmap.png."),
    words: str = typer.Option("auto", help="Word attributions: counterfactual (each word's most decisive edit: "
                              "deleted, or replaced by a word the training texts use in its place), "
                              "integrated-gradients, occlusion, or auto (counterfactual where the model "
                              "kept its word substitutes)."),
    **inputs: Any,
) -> None:
    """Why the model answers as it does for one row: a heatmap over the image regions (Grad-CAM),
    each word's attribution and each modality's Shapley value."""
    import json

    from .explain import WORD_METHODS, explain_row, overlay
    from .modalities import MODALITIES
    from .predictor import Predictor

    if words != "auto" and words not in WORD_METHODS:
        raise MmfuseError(f"--words {words!r}: choose auto, {', '.join(WORD_METHODS)}")
    predictor = Predictor.load(model)
    row = {m: str(v.resolve()) if isinstance(v, Path) else v for m, v in inputs.items() if v is not None}
    _check_single_row(predictor, row)
    with _quiet("mmfuse.predictor"):
        try:
            result = explain_row(predictor, row, words=words)
        except ValueError as error:
            raise MmfuseError(str(error)) from None
    out.mkdir(parents=True, exist_ok=True)
    (out / "explanation.json").write_text(json.dumps(result.as_dict(), indent=2))
    typer.echo(f"prediction: {result.prediction} ({result.probability:.4f})")
    for modality, grid in result.heatmaps.items():
        picture = MODALITIES[modality].decode(row[modality], predictor.config.data)
        path = out / f"{modality}_heatmap.png"
        overlay(picture, grid).save(path)
        typer.echo(f"{modality} heatmap (Grad-CAM): {path}")
    for modality, attributions in result.words.items():
        shown = ", ".join(f"{w} {a:+.3f}" for w, a in sorted(attributions, key=lambda wa: -abs(wa[1]))[:5])
        typer.echo(f"{modality} words ({result.word_method[modality]}), largest effect first: {shown}")
        if result.edits.get(modality):  # aligned with the words: the top word's edit
            top = max(range(len(attributions)), key=lambda i: abs(attributions[i][1]))
            edit = result.edits[modality][top]
            typer.echo(f"  its most decisive edit: {edit['edit']!r} -> {edit['answer']}")
    typer.echo("modality Shapley values: " + ", ".join(f"{m} {v:+.3f}" for m, v in result.shapley.items()))
    typer.echo(f"written: {out / 'explanation.json'}")


app.command("explain")(_with_options(explain, _modality_options()))


@data_app.command("check")
def data_check(
    table: str = typer.Argument(..., help="A CSV / JSONL / Parquet table, or a built-in data set name."),
    config: Optional[Path] = typer.Option(None, help="Config whose data section binds the columns."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    strict: bool = typer.Option(False, help="Exit 2 if any row is bad."),
    limit: int = typer.Option(200, help="How many bad rows to list."),
) -> None:
    """Say what is wrong with a table, row by row: missing or broken images, empty text, bad labels."""
    from .config import load_config
    from .data.manifest import load_manifest

    cfg = load_config(config, list(set_))
    manifest = load_manifest(table, cfg.data.model_copy(update={"strict": False}), task=cfg.task,
                             modalities=cfg.modalities(), labels=cfg.data.labels)
    typer.echo(manifest.summary())
    for bad in manifest.bad_rows[:limit]:
        typer.echo(f"  {bad}")
    if len(manifest.bad_rows) > limit:
        typer.echo(f"  … and {len(manifest.bad_rows) - limit} more")
    present = {m: int(manifest.frame[m].notna().sum()) for m in cfg.modalities() if m in manifest.frame}
    typer.echo("rows with each modality: " + ", ".join(f"{m} {n}" for m, n in present.items()))
    if strict and manifest.bad_rows:
        raise typer.Exit(2)


@data_app.command("features")
def data_features(
    config: Path = typer.Argument(..., help="YAML config: its table and its frozen encoders."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    backend: str = typer.Option("local", help=BACKEND_HELP + " On Ray, a pool of encoder actors (Ray Data), each "
                                "with as many CPUs as this process's torch threads."),
    address: Optional[str] = typer.Option(None, help=ADDRESS_HELP),
) -> None:
    """Extract the frozen encoders' features of the config's table into the feature cache, once per
    unique input, so that train / compare / tune find them there."""
    import time

    import pandas as pd

    from .backends import check_backend, open_backend
    from .compare import fill_cache
    from .config import load_config
    from .predictor import Predictor

    check_backend(backend, address)
    cfg = load_config(config, list(set_))
    with open_backend(backend, address=address, echo=typer.echo) as runner:
        frame = pd.concat(Predictor(cfg).splits().values(), ignore_index=True)
        start = time.perf_counter()
        with _quiet("mmfuse.dataset"):  # its per-modality lines: printed below, once
            calls = fill_cache(cfg, frame, backend=runner)
        seconds = time.perf_counter() - start
    if not calls:
        typer.echo("no frozen encoder in this config: nothing to cache (trainable encoders prepare their inputs "
                   "in each run)")
        return
    for call in calls:
        typer.echo(f"{call['modality']}: {call['computed']} computed, {call['reused']} reused from the cache, "
                   f"{call['seconds']:.1f} s")
    typer.echo(f"{len(frame)} rows in {seconds:.1f} s; cache: {cfg.cache_dir}")


def serve(
    model: Path = typer.Argument(..., help="A model directory to serve."),
    index: Optional[Path] = typer.Option(None, help="An index directory (mmfuse index): adds /search."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; beyond loopback a token is required."),
    port: int = typer.Option(8000, help="Port to listen on."),
    token_file: Optional[Path] = typer.Option(None, help="File holding the bearer token (else $MMFUSE_TOKEN)."),
    max_batch: int = typer.Option(32, help="Most rows in one forward pass."),
    max_wait_ms: float = typer.Option(5.0, help="How long a request waits for others to share its batch."),
    batching: bool = typer.Option(True, "--batching/--no-batching", help="Micro-batch concurrent requests."),
    max_queue: int = typer.Option(256, help="Waiting requests before answering 503 + Retry-After."),
    max_rows: int = typer.Option(64, help="Most rows in one request."),
    max_body_mb: float = typer.Option(8.0, help="Request body cap in MiB (enforced while reading)."),
    timeout: float = typer.Option(30.0, help="Seconds a request may take, queueing included (then 504)."),
    max_request_pixels: int = typer.Option(100_000_000, help="Decoded image pixels in one request, all rows together."),
    mask_pii: bool = typer.Option(False, help="Mask personal data (e-mails, phones, cards, IBANs, ids, IPs, secrets) in request texts before the model sees them, and in the log. Always on for a model trained with privacy.mask_pii."),
    **limits: Any,
) -> None:
    """Serve a model over HTTP: predict, embed, search, health, metrics, OpenAPI docs and a web page;
    a caption model (task: caption) answers POST /caption instead of predict and embed."""
    from .serve import ServeSettings
    from .serve import serve as run_server
    from .serve.security import load_token

    settings = ServeSettings(model_dir=model, index_dir=index, host=host, port=port,
                             token=load_token(token_file), max_batch=max_batch, max_wait_ms=max_wait_ms,
                             batching=batching, max_queue=max_queue, max_rows=max_rows,
                             max_body_bytes=int(max_body_mb * 1024 * 1024), timeout_s=timeout, mask_pii=mask_pii,
                             max_request_pixels=max_request_pixels,
                             **limits)
    if not (model / "config.yaml").is_file():
        raise MmfuseError(f"{model}: not a model directory (no config.yaml)")
    run_server(settings.check())


app.command("serve")(_with_options(serve, _limit_options()))


# ----- alignment: a shared image-text space, its FAISS index and search ---------------------------
index_app = typer.Typer(no_args_is_help=True, help="A FAISS index of images embedded by an aligned model.")
app.add_typer(index_app, name="index")


@app.command()
def align(
    config: Path = typer.Argument(..., help="YAML config with an align section (see configs/easy_vqa_align.yaml)."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
) -> None:
    """Train projection heads into one image-text space; save RUN/model; print test retrieval metrics."""
    from .align import train_alignment
    from .config import load_config

    cfg = load_config(config, list(set_))
    if cfg.align is None:
        raise MmfuseError(f"{config}: no align section (see configs/easy_vqa_align.yaml)")
    run = train_alignment(cfg, echo=typer.echo)
    summary = run.summary
    typer.echo(f"trained {summary['epochs']} epochs on {summary['train_pairs']} pairs in "
               f"{summary['train_seconds']:.1f} s (objectives: "
               + ", ".join(f"{k} {v:g}" for k, v in cfg.align.objectives.items()) + ")")
    typer.echo(tensorboard_line(summary["tensorboard"]))
    if "test_metrics" in summary:
        print_metrics(f"test retrieval ({summary['test_pairs']} pairs)", summary["test_metrics"])
    if "zero_shot" in summary:
        shot = summary["zero_shot"]
        typer.echo(f"\nzero-shot accuracy: held-out captions {shot['held_out_acc']:.4f} "
                   f"({shot['held_out_images']} images), seen {shot['seen_acc']:.4f} "
                   f"({shot['seen_images']} images), chance {shot['chance']:.4f}")
    model_dir = Path(cfg.output_dir) / "model"
    run.model.save(model_dir, metrics=summary)
    typer.echo(f"aligned model saved to {model_dir}")


def _embed_rows(model):
    return lambda rows: model.embed_images(rows["image"].tolist())


def _gallery(data: Path, image_column: str):
    from .align.gallery import image_rows

    rows, bad = image_rows(data, column=image_column)
    for line in bad[:20]:
        typer.echo(f"  skipped {line}", err=True)
    if bad:
        typer.echo(f"{len(bad)} bad rows skipped", err=True)
    return rows


def _index_model(index):
    from .align import AlignedModel

    if "model" not in index.info:
        raise MmfuseError("this index records no aligned model (index.json info.model); build it with "
                          "`mmfuse index build MODEL`")
    return AlignedModel.load(index.info["model"])


@index_app.command("build")
def index_build(
    model: Path = typer.Argument(..., help="An aligned model directory (mmfuse align)."),
    data: Path = typer.Option(..., help="A table with an image column, or a folder of images."),
    out: Path = typer.Option(..., help="Index directory to write."),
    image_column: str = typer.Option("image", help="The table's image-path column."),
    kind: str = typer.Option("auto", help="Index kind: auto, flat, hnsw, ivf, ivf_pq."),
    batch_size: int = typer.Option(256, help="Images embedded per chunk (each chunk is staged: resumable)."),
) -> None:
    """Embed images with an aligned model into a FAISS index (rerun to resume an interrupted build)."""
    from .align import AlignedModel
    from .index import build_index

    aligned = AlignedModel.load(model)
    rows = _gallery(data, image_column)
    index = build_index(rows, _embed_rows(aligned), out, batch_size=batch_size, kind=kind,
                        info={"model": str(model.resolve())})
    typer.echo(f"indexed {len(index)} images ({index.kind}) into {out}")


@index_app.command("add")
def index_add(
    index: Path = typer.Argument(..., help="An index directory (mmfuse index build)."),
    data: Path = typer.Option(..., help="A table with an image column, or a folder of images."),
    image_column: str = typer.Option("image", help="The table's image-path column."),
) -> None:
    """Embed more images into an existing index with the model it was built with."""
    from .index import VectorIndex

    vectors = VectorIndex.open(index, mmap=False)
    rows = _gallery(data, image_column)
    ids = vectors.add(_index_model(vectors).embed_images(rows["image"].tolist()), rows)
    vectors.save(index)
    typer.echo(f"added {len(ids)} images (ids {ids[0]}..{ids[-1]}); the index holds {len(vectors)}")


@index_app.command("remove")
def index_remove(
    index: Path = typer.Argument(..., help="An index directory."),
    ids: str = typer.Option(..., help="Ids to remove, comma-separated (as printed by search)."),
) -> None:
    """Remove images from an index by id."""
    from .index import VectorIndex

    try:
        wanted = [int(part) for part in ids.split(",") if part.strip()]
    except ValueError:
        raise MmfuseError(f"--ids {ids!r}: expected comma-separated integers") from None
    vectors = VectorIndex.open(index, mmap=False)
    removed = vectors.remove(wanted)
    vectors.save(index)
    typer.echo(f"removed {removed} of {len(wanted)} ids; the index holds {len(vectors)}")


@app.command()
def search(
    index: Path = typer.Argument(..., help="An index directory (mmfuse index build)."),
    text: Optional[str] = typer.Argument(None, help="A text query, e.g. \"a red circle\"."),
    image: Optional[Path] = typer.Option(None, help="An image query instead of text."),
    k: int = typer.Option(10, "-k", "--k", help="How many hits."),
    html: Optional[Path] = typer.Option(None, help="Also write an HTML contact sheet of the hits."),
) -> None:
    """Search an image index by text or by image: rank, score, id, path of the top k."""
    import pandas as pd

    from .align.gallery import contact_sheet
    from .index import VectorIndex

    if (text is None) == (image is None):
        raise MmfuseError("give either a text query or --image PATH")
    vectors = VectorIndex.open(index)
    model = _index_model(vectors)
    query = model.embed_texts([text]) if text is not None else model.embed_images([image])
    result = vectors.search(query, k)
    found = result.ids[0] >= 0
    hits = vectors.metadata_for(result.ids[0][found])
    hits.insert(0, "score", result.scores[0][found])
    hits.insert(0, "rank", range(1, len(hits) + 1))
    typer.echo(f"{'rank':>4}  {'score':>7}  {'id':>6}  path")
    for hit in hits.itertuples():
        typer.echo(f"{hit.rank:>4}  {hit.score:>7.4f}  {hit.id:>6}  {hit.image}")
    if html is not None:
        html.write_text(contact_sheet(pd.DataFrame(hits), text if text is not None else f"image: {image}"))
        typer.echo(f"contact sheet: {html}")


@app.command()
def export(
    model: Path = typer.Argument(..., help="A model directory written by train / Predictor.save."),
    format_: str = typer.Option("onnx", "--format", help="Export format (onnx)."),
    out: Optional[Path] = typer.Option(None, help="Output model directory (default: MODEL_onnx[_int8][_prunedX])."),
    quantize: Optional[str] = typer.Option(None, help="int8: onnxruntime dynamic quantization of the graphs."),
    prune: Optional[float] = typer.Option(None, help="Sparsity (e.g. 0.5) of fusion + head linear weights, "
                                                     "by global magnitude, then a short fine-tune."),
    finetune_epochs: int = typer.Option(2, help="Fine-tune epochs after --prune."),
    evaluate: bool = typer.Option(True, help="Measure accuracy and rows/s on the test split -> MODEL/report/export.md."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for onnxruntime and PyTorch (default: all cores)."),
) -> None:
    """ONNX graphs (image tower, text tower, fusion + head) in a model directory that Predictor.load runs
    with onnxruntime; optionally int8-quantized and/or pruned."""
    from .captioning.artifact import is_caption_model
    from .export import export_model
    from .export.measure import format_table

    if is_caption_model(model):
        raise MmfuseError(f"{model} is a caption model: captioning models are not exported (export covers "
                          "classification, multi-label and regression models)")

    result = export_model(model, out, fmt=format_, quantize=quantize, prune=prune,
                          finetune_epochs=finetune_epochs, evaluate=evaluate, threads=threads)
    if result["lines"]:
        typer.echo(format_table(result["lines"]))
        typer.echo(f"report: {model / 'report' / 'export.md'}")
    typer.echo(f"exported to {result['out']}")


@app.command()
def caption(
    model: Path = typer.Argument(..., help="A caption model directory (mmfuse train with task: caption)."),
    image: Optional[list[Path]] = typer.Option(None, "--image", help="An image to caption (repeatable)."),
    images: Optional[Path] = typer.Option(None, help="A folder of images, or a table (CSV/JSONL/Parquet) with an "
                                                     "image column: caption every one."),
    image_column: str = typer.Option("image", help="With a table: its image column."),
    out: Optional[Path] = typer.Option(None, help="Write image,caption as CSV here (default: print a line each)."),
    batch_size: int = typer.Option(64, min=1, help="Images decoded and captioned at a time."),
    beam_size: Optional[int] = typer.Option(None, min=1, help="Beam size (default: the model's caption.beam_size; 1: greedy)."),
    length_penalty: Optional[float] = typer.Option(None, help="GNMT length penalty alpha (default: the model's)."),
) -> None:
    """Caption images with a trained caption model: given ones (--image), or a folder or table
    (--images; bad rows are skipped and counted); a line per image, or a CSV (--out)."""
    import csv

    from .captioning.artifact import load_captioner
    from .captioning.model import caption_images, pixels_of
    from .data.media import MediaError, open_image

    if bool(image) == (images is not None):
        raise MmfuseError("give either --image (one or more) or --images (a folder or table)")
    paths = [str(p) for p in image] if image else _gallery(images, image_column)["image"].tolist()
    captioner, cfg = load_captioner(model)
    writer = None
    with (open(out, "w", newline="") if out else contextlib.nullcontext()) as file:
        if file is not None:
            writer = csv.writer(file)
            writer.writerow(["image", "caption"])
        for start in range(0, len(paths), batch_size):  # a batch's pixels at a time: any number of images
            chunk = paths[start:start + batch_size]
            pictures = []
            for path in chunk:
                try:
                    pictures.append(open_image(path, max_pixels=cfg.data.max_pixels))
                except (MediaError, OSError) as error:
                    raise MmfuseError(f"--image {path}: {error}") from None
            captions = caption_images(captioner, pixels_of(captioner, pictures), beam_size=beam_size,
                                      length_penalty=length_penalty)
            for path, text in zip(chunk, captions):
                if writer is None:
                    typer.echo(f"{path}\t{text}")
                else:
                    writer.writerow([path, text])
    if out:
        typer.echo(f"{len(paths)} captions written to {out}")


def launched_rank() -> int:
    """This process's DDP rank as its launcher sets it (Lightning for its extra devices, torchrun,
    SLURM); 0 outside DDP. Read before Lightning is imported (slow) to quiet the other ranks."""
    return int(os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or os.environ.get("LOCAL_RANK") or 0)


def main() -> None:
    # Under DDP every process runs the command: only rank 0 says what it reads and does.
    logging.basicConfig(level=logging.INFO if launched_rank() == 0 else logging.WARNING, format="%(message)s")
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        app()
    except MmfuseError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(getattr(error, "exit_code", 2))  # 2, or 128 + the signal that stopped training
    except ModuleNotFoundError as error:
        extra = OPTIONAL_PACKAGES.get((error.name or "").split(".")[0])
        if extra is None:
            raise
        typer.echo(f"error: this command needs the package {error.name!r}: pip install 'mmfuse[{extra}]'", err=True)
        sys.exit(2)


# Packages of the optional extras (pyproject.toml) -> the extra that installs them.
OPTIONAL_PACKAGES = {"faiss": "search", "open_clip": "search", "fastapi": "serve", "uvicorn": "serve",
                     "multipart": "serve", "prometheus_client": "serve", "httpx": "serve",
                     "onnx": "export", "onnxscript": "export", "onnxruntime": "export",
                     "optuna": "tune", "optuna_integration": "tune", "ray": "ray"}


if __name__ == "__main__":
    main()
