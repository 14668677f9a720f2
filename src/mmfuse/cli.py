"""The `mmfuse` command line (typer). User errors print one line and exit 2, without a traceback."""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from .errors import MmfuseError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Multimodal (image + text) fusion models: train, evaluate, predict, check data.")
data_app = typer.Typer(no_args_is_help=True, help="Look at a table before training on it.")
app.add_typer(data_app, name="data")

SET_HELP = "Override a config field: --set fusion.name=concat (repeatable)."


def print_metrics(title: str, metrics: dict[str, float], contribution: dict[str, float] | None = None) -> None:
    typer.echo(f"\n{title}")
    width = max(len(k) for k in metrics)
    for key, value in metrics.items():
        typer.echo(f"  {key:<{width}}  {value:.4f}")
    if contribution:
        typer.echo("  modality contribution: " + ", ".join(f"{k.replace('_', ' ')} {v:.4f}"
                                                          for k, v in contribution.items()))


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
    from .predictor import Predictor

    overrides = list(set_) + (["data.strict=true"] if strict else []) + ([f"output_dir={output}"] if output else [])
    cfg = load_config(config, overrides)
    predictor = Predictor(cfg).fit(resume=resume)
    run = Path(cfg.output_dir)
    fit = predictor.fit_summary
    typer.echo(f"trained {fit['epochs']} epochs in {fit['train_seconds']:.1f} s; best checkpoint {fit['best_checkpoint']}")
    test = getattr(predictor, "_test_frame", None)
    if test is not None and len(test):
        result = predictor.evaluate(test, report_dir=run / "model" / "report", title="Test split")
        print_metrics(f"test ({result['rows']} rows)", result["metrics"], result["modality_contribution"])
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
) -> None:
    """Train each fusion × seed (× fold) in its own process; rank them by the test metric, with their cost."""
    from .compare import parse_fusions, run_comparison
    from .config import load_config

    cfg = load_config(config, list(set_))
    run_comparison(cfg, parse_fusions(fusions), seeds, folds, out or Path(cfg.output_dir) / "compare",
                   echo=typer.echo)


@app.command()
def evaluate(
    model: Path = typer.Argument(..., help="A model directory written by train / Predictor.save."),
    split: str = typer.Option("test", help="Split of the configured data to evaluate: train, val or test."),
    data: Optional[Path] = typer.Option(None, help="Evaluate on this table instead of a split."),
    report: Optional[Path] = typer.Option(None, help="Report directory (default: MODEL/report)."),
    robustness: bool = typer.Option(False, help="Also the metric under graded image and text noise (curves)."),
) -> None:
    """Metrics table, per-class table, confusion matrix and modality contribution -> report.md."""
    from .predictor import Predictor
    from .robustness import robustness_section

    predictor = Predictor.load(model)
    frame = data if data is not None else predictor.splits().get(split)
    if frame is None or (not isinstance(frame, Path) and len(frame) == 0):
        raise MmfuseError(f"split {split!r} has no rows")
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


@app.command()
def predict(
    model: Path = typer.Argument(..., help="A model directory."),
    image: Optional[Path] = typer.Option(None, help="One image (single-row prediction)."),
    text: Optional[str] = typer.Option(None, help="One text / question (single-row prediction)."),
    data: Optional[Path] = typer.Option(None, help="A table to predict in batch."),
    out: Optional[Path] = typer.Option(None, help="Write batch predictions here (CSV)."),
    top_k: int = typer.Option(3, help="How many labels with scores to show."),
) -> None:
    """Predict one row (--image / --text) or a whole table (--data, --out)."""
    from .predictor import Predictor

    predictor = Predictor.load(model)
    if data is None:
        if image is None and text is None:
            raise MmfuseError("give --image and/or --text, or --data TABLE")
        columns = predictor.config.data.columns
        row = {}
        if image is not None:
            row[columns.image] = str(image.resolve())
        if text is not None:
            row[columns.text] = text
        result = predictor.predict([row], top_k=top_k)
        if result.empty:
            raise MmfuseError("the input was rejected: " + "; ".join(str(b) for b in predictor.bad_rows))
        first = result.iloc[0]
        typer.echo(f"prediction: {first['prediction']}")
        for k in range(1, top_k + 1):
            if f"top{k}" in result:
                typer.echo(f"  {first[f'top{k}']:<20} {first[f'top{k}_score']:.4f}")
        return
    result = predictor.predict(data, top_k=top_k)
    if out is None:
        typer.echo(result.to_csv(index=False))
    else:
        result.to_csv(out, index=False)
        typer.echo(f"{len(result)} predictions written to {out}")
    if predictor.bad_rows:
        typer.echo(f"{len(predictor.bad_rows)} bad rows skipped:", err=True)
        for bad in predictor.bad_rows:
            typer.echo(f"  {bad}", err=True)


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


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        app()
    except MmfuseError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
