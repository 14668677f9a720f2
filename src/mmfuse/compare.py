"""Which fusion wins on *your* table, and at what cost: `mmfuse compare`.

    run_comparison(config, ["concat", "film"], seeds=3, folds=None, out_dir=Path("runs/compare"))

Every cell (fusion × seed × fold) trains in its own child process, so its peak RSS is its own, and
writes `cells/<fusion>-s<seed>[-f<fold>]/cell.json`. A cell whose cell.json exists is reused, so an
interrupted comparison picks up where it stopped. The table is read and split once, by the parent;
frozen encoders fill the shared feature cache once, before the first cell. The results are
`comparison.csv` (one row per cell), `comparison.md` (one row per fusion, ranked, with a paired
test against the best) and three plots (metric, cost, robustness curves). `backend=`
(mmfuse.backends) runs the cells as Ray tasks and the extraction on Ray Data: the same results.
"""
from __future__ import annotations

import itertools
import json
import logging
import math
import multiprocessing
import os
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from scipy.stats import ttest_rel

from .config import Config, dump_config, load_config, parse_config
from .errors import ConfigError, MmfuseError
from .safe_yaml import read_yaml

Echo = Callable[[str], None]


# ----- what to run ----------------------------------------------------------------------------

def parse_fusions(text: str) -> list[str]:
    """'concat, film' -> ['concat', 'film']; 'all' -> every registered fusion."""
    from .fusion import available_fusions

    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return available_fusions()
    return list(dict.fromkeys(names))


def check_request(fusions: list[str], seeds: int, folds: int | None) -> None:
    """Fail before any work: an unknown fusion names the available ones (the registry's error)."""
    from .fusion import FUSIONS

    if not fusions:
        raise ConfigError("--fusions: name at least one fusion")
    for name in fusions:
        FUSIONS.get(name)
    if seeds < 1:
        raise ConfigError(f"--seeds: expected 1 or more, got {seeds}")
    if folds is not None and folds < 2:
        raise ConfigError(f"--folds: expected 2 or more, got {folds}")


def cell_name(fusion: str, seed: int, fold: int | None) -> str:
    return f"{fusion}-s{seed}" + ("" if fold is None else f"-f{fold}")


def with_compare_settings(config: Config, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The config every cell starts from: the config's `compare.set` applied, then the command
    line's own `--set` again, so what the user typed last wins over the file's compare settings."""
    if not config.compare.set:
        return config
    from .config import apply_overrides, set_path

    raw = config.model_dump(mode="json")
    for key, value in config.compare.set.items():
        set_path(raw, key, value)
    apply_overrides(raw, list(overrides))
    raw["compare"]["set"] = {}  # applied; a cell's config must not apply them again
    return parse_config(raw, "compare.set")


def cell_config(config: Config, fusion: str, seed: int, output_dir: Path) -> Config:
    raw = config.model_dump(mode="json")
    raw["fusion"]["name"] = fusion
    # Options belong to one fusion (film's `pool` means nothing to concat): keep them only for it.
    if fusion != config.fusion.name:
        raw["fusion"]["options"] = {}
    raw["train"]["seed"] = seed
    raw["train"]["progress_bar"] = False  # the child's output goes to a log file
    raw["output_dir"] = str(output_dir)
    # Every cell must share one cache, wherever the child runs from.
    raw["cache_dir"] = str(Path(config.cache_dir).expanduser().resolve())
    return parse_config(raw, f"cell {output_dir.name}")


# ----- data: read and split once, for every cell ------------------------------------------------

def grouped_folds(frame: pd.DataFrame, k: int, seed: int, grouped: bool) -> np.ndarray:
    """A fold id per row; all rows of one image share a fold (the split layer's grouping rule)."""
    from .data.manifest import group_keys

    keys = group_keys(frame, grouped)
    groups = sorted(set(keys))
    if len(groups) < k:
        raise ConfigError(f"--folds {k}: the train + val rows hold only {len(groups)} images (groups)")
    # Shuffle the sorted keys with the split seed, then deal them round-robin: deterministic and
    # independent of row order, like the split layer's own carving.
    order = np.random.default_rng(seed).permutation(len(groups))
    fold_of = {groups[index]: position % k for position, index in enumerate(order)}
    return np.array([fold_of[key] for key in keys])


def plan_parts(splits: dict[str, pd.DataFrame], folds: int | None, config: Config
               ) -> dict[int | None, dict[str, Any]]:
    """{fold (None without folds): {"train", "val", "eval" frames, "eval_split" name}}.

    With a test split, a fold's held-out rows pick the checkpoint and the test split scores it.
    Without one, the held-out fold is scored, and a validation part is carved out of the other
    folds so that checkpoint picking never sees the rows it is scored on.
    """
    test = splits.get("test")
    has_test = test is not None and len(test) > 0
    if folds is None:
        if not has_test:
            raise ConfigError("no test rows to compare on: set data.test_fraction or data.test_source, "
                              "or use --folds K")
        return {None: {"train": splits["train"], "val": splits["val"], "eval": test, "eval_split": "test split"}}
    from .data.manifest import carve

    data = config.data
    pool = pd.concat([splits["train"], splits["val"]], ignore_index=True)
    fold_ids = grouped_folds(pool, folds, data.split_seed, data.group_split_by_image)
    parts: dict[int | None, dict[str, Any]] = {}
    for fold in range(folds):
        held, rest = pool[fold_ids == fold], pool[fold_ids != fold].reset_index(drop=True)
        if has_test:
            parts[fold] = {"train": rest, "val": held, "eval": test, "eval_split": "test split"}
            continue
        side = np.array(carve(rest, [("val", data.val_fraction)], data.split_seed, data.group_split_by_image))
        parts[fold] = {"train": rest[side == "train"], "val": rest[side == "val"], "eval": held,
                       "eval_split": "held-out fold"}
    return parts


def write_frame(frame: pd.DataFrame, path: Path) -> None:
    # JSON, not CSV: multilabel lists and exact floats survive; numpy scalars become Python ones.
    def plain(value: Any) -> Any:
        return value.item() if hasattr(value, "item") else list(value)

    payload = {"columns": list(frame.columns), "data": frame.astype(object).values.tolist()}
    path.write_text(json.dumps(payload, default=plain))


def read_frame(path: Path) -> pd.DataFrame:
    from .predictor import mark

    payload = json.loads(path.read_text())
    frame = pd.DataFrame(payload["data"], columns=payload["columns"])
    frame["row"] = frame["row"].astype("int64")
    return mark(frame)  # already validated by the parent: not read as a user table again


def prepare_data(config: Config, folds: int | None, data_dir: Path, backend=None) -> dict[int | None, dict[str, Any]]:
    """Read + check + split the table once; write each part for the children; fill the cache
    (on the backend's workers: Ray Data with `--backend ray`)."""
    from .predictor import Predictor

    predictor = Predictor(config)
    splits = predictor.splits()
    parts = plan_parts(splits, folds, config)
    data_dir.mkdir(parents=True, exist_ok=True)
    # One label set for every cell, from every row: the heads are comparable, and a label seen
    # only in one fold's evaluation rows is not an error.
    labels: list[str] = []
    if predictor.task.per_label:
        labels = list(config.data.labels or predictor.task.label_set(pd.concat(splits.values())["label"]))
    (data_dir / "labels.json").write_text(json.dumps(labels))
    for fold, part in parts.items():
        prefix = "" if fold is None else f"f{fold}-"
        part["files"] = {}
        for role in ("train", "val", "eval"):
            path = data_dir / f"{prefix}{role}.json"
            write_frame(part[role], path)
            part["files"][role] = str(path)
    fill_cache(config, pd.concat(splits.values(), ignore_index=True), backend=backend)
    evaluated = pd.concat([part["eval"] for part in parts.values()], ignore_index=True)
    for perturb in noisy_variants(config):
        fill_cache(config, evaluated, perturb, backend=backend)
    return parts


def noisy_variants(config: Config) -> list[dict[str, Any]]:
    """One {modality: perturbation} per (noise, level) of the robustness curves."""
    from .robustness import NOISES, perturbation

    return [{modality: perturbation(modality, noise, level)}
            for modality in config.modalities() for noise in NOISES.get(modality, {})
            for level in config.compare.robustness_levels if level > 0]


def fill_cache(config: Config, frame: pd.DataFrame, perturb: dict[str, Any] | None = None,
               backend=None) -> list[dict[str, Any]]:
    """Run each frozen encoder over every unique input once, so cells only read the cache.

    With `perturb`, only the perturbed modality, into its noisy cache variant (robustness curves).
    `backend` computes the missing entries (mmfuse.backends; default: this process). Returns each
    encoder's {"modality", "variant", "computed", "reused", "seconds"}.
    """
    import torch

    from .backends import BackendCache
    from .dataset import build_dataset
    from .encoders import Encoder
    from .model import build_encoders
    from .predictor import Predictor

    # Seeded as Predictor.fit seeds, so even a frozen random encoder matches the first seed's cells.
    torch.manual_seed(config.train.seed)
    # An encoder that learns a vocabulary from the training rows differs per fold: cells fill
    # its entries themselves.
    frozen = {m: e for m, e in build_encoders(config).items()
              if not e.trainable and type(e).fit is Encoder.fit and (perturb is None or m in perturb)}
    cache = BackendCache(config.cache_dir, encode=getattr(backend, "encode", None))
    if frozen:
        build_dataset(frame.assign(label=None), frozen, task=config.task, labels=[],
                      data=config.data, cache=cache,
                      group_by_image=False, device=Predictor(config).device, perturb=perturb)
    return cache.calls


# ----- one cell, in a child process -----------------------------------------------------------

def run_cell(cell_dir: Path) -> dict[str, Any]:
    """Train + evaluate the cell described by cell_dir/{config.yaml, spec.json}; write cell.json."""
    import torch

    from .evaluate import predict_outputs
    from .predictor import Predictor

    spec = json.loads((cell_dir / "spec.json").read_text())
    config = load_config(cell_dir / "config.yaml")
    frames = {role: read_frame(Path(path)) for role, path in spec["files"].items()}
    predictor = Predictor(config)
    predictor.labels = json.loads(Path(spec["labels"]).read_text())
    predictor.fit(frames["train"], frames["val"])
    result = predictor.evaluate(frames["eval"])
    # Latency: the trained model over the evaluation rows in batches, features as training saw
    # them (frozen encoders from the cache), so it is the cost the fusions differ in.
    dataset = predictor._dataset(frames["eval"])
    start = time.perf_counter()
    predict_outputs(predictor.model, dataset, config, predictor.device)
    latency = (time.perf_counter() - start) / max(1, len(dataset)) * 1000
    robustness = cell_robustness(predictor, frames["eval"], cell_dir) if spec.get("robustness", True) else {}
    record = {
        "cell": cell_dir.name, "fusion": spec["fusion"], "seed": spec["seed"], "fold": spec["fold"],
        "eval_split": spec["eval_split"], "eval_rows": result["rows"],
        "metric_name": result["headline"], "metric": result["metrics"][result["headline"]],
        **{k: v for k, v in result["modality_contribution"].items() if k != "all"},
        **result["metrics"],
        "params": sum(p.numel() for p in predictor.model.parameters() if p.requires_grad),
        "train_s": predictor.fit_summary["train_seconds"],
        "latency_ms_per_row": latency,
        **robustness,
        "peak_rss_mb": peak_rss_mb(),
        "device": predictor.device, "torch_threads": torch.get_num_threads(),
    }
    # Write-then-rename: a killed child never leaves a half cell.json that would count as done.
    partial = cell_dir / "cell.json.tmp"
    partial.write_text(json.dumps(record, indent=2))
    partial.rename(cell_dir / "cell.json")
    return record


def cell_robustness(predictor, frame: pd.DataFrame, cell_dir: Path) -> dict[str, float]:
    """The curves (robustness.csv) and each modality's mean relative robustness (`robust_<modality>`)."""
    from .robustness import relative_robustness

    levels = predictor.config.compare.robustness_levels
    if not levels:
        return {}
    curves = predictor.robustness(frame, levels=(0.0, *sorted(set(levels) - {0.0})))
    curves.to_csv(cell_dir / "robustness.csv", index=False)
    metric = curves.columns[-1]
    scores = {}
    for (modality, _), part in curves.groupby(["modality", "noise"], sort=False):
        part = part.sort_values("level")
        scores.setdefault(modality, []).append(relative_robustness(part["level"].tolist(), part[metric].tolist()))
    return {f"robust_{modality}": float(np.mean(values)) for modality, values in scores.items()}


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB on Linux


# Importing torch + Lightning + transformers takes 5-8 s, longer than many cells train: cells
# fork from a server process that imported them once (forkserver), so each cell still runs in a
# fresh process of its own (own memory peak, crash isolated) without paying the imports again.
PRELOAD = ["torch", "lightning", "transformers", "mmfuse.compare", "mmfuse.predictor", "mmfuse.train"]


def cell_context() -> multiprocessing.context.BaseContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def launch_cell(cell_dir: Path, context: multiprocessing.context.BaseContext) -> int:
    """Run the cell in a child process; its exit code (0 when cell.json was written)."""
    process = context.Process(target=cell_child, args=(str(cell_dir),), name=f"cell {cell_dir.name}")
    process.start()
    process.join()
    return process.exitcode


def cell_child(cell_dir: str) -> None:
    """The child: stdout and stderr go to the cell's log.txt, as a separate program's would."""
    with open(Path(cell_dir) / "log.txt", "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
        sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
        logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
        try:
            run_cell(Path(cell_dir))
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)  # skip the parent's atexit hooks, inherited through fork
        sys.stdout.flush()


# ----- reuse ------------------------------------------------------------------------------------

def _comparable(raw: dict[str, Any]) -> dict[str, Any]:
    # Where a cell's files and the feature cache live does not change its result.
    return {k: v for k, v in raw.items() if k not in ("output_dir", "cache_dir")}


def _first_difference(old: Any, new: Any, path: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                return _first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else key)
    return f"{path}: {old!r} -> {new!r}"


def check_reusable(cell_dir: Path, config: Config) -> None:
    """A finished cell run with another config must not be mixed into this comparison."""
    stored = read_yaml(cell_dir / "config.yaml")
    wanted = config.model_dump(mode="json")
    if _comparable(stored) != _comparable(wanted):
        raise ConfigError(f"{cell_dir} holds a result for another config "
                          f"({_first_difference(_comparable(stored), _comparable(wanted))}); "
                          "use another --out, or delete that cell to rerun it")


# ----- the runner -------------------------------------------------------------------------------

def run_comparison(config: Config, fusions: list[str], seeds: int, folds: int | None, out_dir: Path,
                   *, echo: Echo = print, backend=None) -> pd.DataFrame:
    """Run (or reuse) every cell, write comparison.csv / .md / plots, return one row per cell.

    `backend` (mmfuse.backends.open_backend) says where cells run and features are extracted;
    default: cells one after another in child processes of this machine."""
    from .backends import LocalBackend

    check_request(fusions, seeds, folds)
    config = with_compare_settings(config)
    backend = backend or LocalBackend()
    backend.check(config)
    out_dir = Path(out_dir).resolve()  # spec.json's paths are read by cells that may run elsewhere
    fold_ids = [None] if folds is None else list(range(folds))
    seed_ids = [config.train.seed + i for i in range(seeds)]
    cells = [(f, s, k) for f in fusions for s in seed_ids for k in fold_ids]
    configs = {cell: cell_config(config, cell[0], cell[1], out_dir / "cells" / cell_name(*cell)) for cell in cells}

    todo = []
    for cell in cells:
        cell_dir = out_dir / "cells" / cell_name(*cell)
        if (cell_dir / "cell.json").is_file():
            check_reusable(cell_dir, configs[cell])
            echo(f"{cell_dir.name}: reused (cell.json exists)")
        else:
            todo.append(cell)
    reused = len(cells) - len(todo)
    echo(f"{len(cells)} cells ({len(fusions)} fusions × {seeds} seeds × {len(fold_ids)} folds); "
         f"reused {reused} with a cell.json, {len(todo)} to run")
    if todo:
        parts = prepare_data(config, folds, out_dir / "data", backend)
    for cell in todo:
        fusion, seed, fold = cell
        cell_dir = out_dir / "cells" / cell_name(*cell)
        cell_dir.mkdir(parents=True, exist_ok=True)
        (cell_dir / "config.yaml").write_text(dump_config(configs[cell]))
        part = parts[fold]
        # Noise curves cost a dozen passes over the evaluation rows: measured on each fusion's
        # first seed and fold only.
        spec = {"fusion": fusion, "seed": seed, "fold": fold, "eval_split": part["eval_split"],
                "files": part["files"], "labels": str(out_dir / "data" / "labels.json"),
                "robustness": seed == seed_ids[0] and fold == fold_ids[0]}
        (cell_dir / "spec.json").write_text(json.dumps(spec, indent=2))
    failed = []
    cell_dirs = [out_dir / "cells" / cell_name(*cell) for cell in todo]
    for number, (cell_dir, error) in enumerate(backend.run_cells(cell_dirs, echo), 1):
        if error is not None:
            failed.append(cell_dir.name)
            log = cell_dir / "log.txt"
            tail = log.read_text()[-1500:] if log.is_file() else ""
            echo(f"[{number}/{len(todo)}] {cell_dir.name}: FAILED ({error}; log: {log})\n{tail}")
            continue
        done = json.loads((cell_dir / "cell.json").read_text())
        echo(f"[{number}/{len(todo)}] {cell_dir.name}: {done['metric_name']} {done['metric']:.4f}, "
             f"train {done['train_s']:.1f} s, peak {done['peak_rss_mb']:.0f} MB")

    records = [json.loads(path.read_text()) for cell in cells
               if (path := out_dir / "cells" / cell_name(*cell) / "cell.json").is_file()]
    if not records:
        raise MmfuseError(f"every cell failed; see the log.txt files under {out_dir / 'cells'}")
    frame = pd.DataFrame(records)
    write_results(frame, config, out_dir, echo=echo)
    if failed:
        raise MmfuseError(f"{len(failed)} cell(s) failed: {', '.join(failed)} (the table above leaves them out; "
                          "see their log.txt, and rerun to retry only them)")
    return frame


# ----- results ----------------------------------------------------------------------------------

def paired_p(a: pd.Series, b: pd.Series) -> float | None:
    """p-value for a != b over the (seed, fold) pairs both have; None with fewer than two pairs."""
    pairs = pd.concat([a, b], axis=1, join="inner").dropna()
    if len(pairs) < 2:
        return None
    x, y = pairs.iloc[:, 0].to_numpy(float), pairs.iloc[:, 1].to_numpy(float)
    if np.all(x == y):
        return 1.0  # identical results: no evidence of a difference (the t statistic is 0/0)
    p = float(ttest_rel(x, y).pvalue)
    return None if math.isnan(p) else p


def summarize(cells: pd.DataFrame, higher_is_better: bool) -> pd.DataFrame:
    """One row per fusion, best first: the metric's mean / std over seeds and folds, and costs."""
    costs = ["params", "train_s", "latency_ms_per_row", "peak_rss_mb"]
    extra = [c for c in cells.columns if c.startswith(("without_", "robust_"))]
    grouped = cells.groupby("fusion", sort=False)
    summary = grouped["metric"].agg(mean="mean", std="std", n="count").join(grouped[costs + extra].mean())
    summary["effective_robustness"] = effective_robustness(summary)
    summary = summary.sort_values("mean", ascending=not higher_is_better, kind="stable")  # ties: as asked
    keyed = cells.assign(fold=cells["fold"].fillna(-1)).set_index(["seed", "fold"])
    best = summary.index[0]
    summary["p_vs_best"] = [None if name == best else paired_p(keyed.loc[keyed["fusion"] == best, "metric"],
                                                               keyed.loc[keyed["fusion"] == name, "metric"])
                            for name in summary.index]
    return summary.reset_index()


def effective_robustness(summary: pd.DataFrame) -> pd.Series:
    """MultiBench's effective robustness: a fusion's relative robustness (mean over its modalities'
    noises) minus what a line fitted across all the compared fusions predicts from its clean
    metric. Positive: more robust than its accuracy alone would suggest. Needs 3+ fusions."""
    robust = [c for c in summary.columns if c.startswith("robust_")]
    if not robust or len(summary) < 3 or summary["mean"].nunique() < 2:
        return pd.Series(np.nan, index=summary.index)
    relative = summary[robust].mean(axis=1)
    slope, intercept = np.polyfit(summary["mean"].to_numpy(float), relative.to_numpy(float), 1)
    return relative - (slope * summary["mean"] + intercept)


def fmt_mean_std(mean: float, std: float, n: int) -> str:
    return f"{mean:.4f} ± {std:.4f}" if n > 1 else f"{mean:.4f}"  # no spread from one run


def markdown_table(summary: pd.DataFrame, metric: str) -> str:
    without = [c for c in summary.columns if c.startswith("without_")]
    robust = [c for c in summary.columns if c.startswith("robust_")]
    if robust and summary["effective_robustness"].notna().any():
        robust.append("effective_robustness")
    head = ["rank", "fusion", f"{metric} (mean ± std)", "n", "params", "train s", "latency ms/row", "peak MB",
            *[f"{metric} {c.replace('_', ' ')}" for c in without], *[c.replace("_", " ") for c in robust],
            "p vs best"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rank, row in enumerate(summary.itertuples(index=False), 1):
        p = "best" if rank == 1 else ("n/a" if row.p_vs_best is None or pd.isna(row.p_vs_best) else f"{row.p_vs_best:.3f}")
        cells = [str(rank), row.fusion, fmt_mean_std(row.mean, row.std, row.n), str(row.n),
                 f"{row.params:,.0f}", f"{row.train_s:.1f}", f"{row.latency_ms_per_row:.3f}", f"{row.peak_rss_mb:.0f}",
                 *[f"{getattr(row, c):.4f}" for c in without], *[f"{getattr(row, c):+.3f}" if c.startswith("eff")
                                                                 else f"{getattr(row, c):.3f}" for c in robust], p]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(cells: pd.DataFrame, config: Config, out_dir: Path, *, echo: Echo = print) -> pd.DataFrame:
    from .tasks import create_task

    higher = create_task(config.task).headline_mode == "max"
    metric = cells["metric_name"].iloc[0]
    cells.to_csv(out_dir / "comparison.csv", index=False)
    summary = summarize(cells, higher)
    table = markdown_table(summary, metric)
    test = "paired t-test (scipy.stats.ttest_rel)"
    rows = sorted(set(cells["eval_rows"]))  # folds differ in size
    span = str(rows[0]) if len(rows) == 1 else f"{rows[0]}–{rows[-1]}"
    text = [
        "# Fusion comparison", "",
        f"Data: `{config.data.source}` ({config.task}). Scored by {metric} "
        f"({'higher' if higher else 'lower'} is better) on the {cells['eval_split'].iloc[0]} "
        f"({span} rows per cell), over {cells['seed'].nunique()} seed(s)"
        + (f" × {cells['fold'].nunique()} folds" if cells["fold"].notna().any() else "") + ".", "",
        table, "",
        f"- **p vs best**: {test} against the best fusion, paired over identical seed/fold cells; "
        "n/a with fewer than two pairs.",
        f"- **{metric} without X**: the mean {metric} with that modality masked out of every row "
        "(robustness to a missing modality).",
        "- **params**: trainable parameters. **train s**: the fit alone (frozen encoders' features come from the "
        "shared cache, filled once before the cells). "
        "**latency**: the trained model over the evaluation rows, in batches. **peak MB**: the cell process's peak RSS.",
    ]
    if any(c.startswith("robust_") for c in cells.columns):
        levels = ", ".join(f"{v:g}" for v in config.compare.robustness_levels)
        text.append(f"- **robust X**: relative robustness (area under the {metric}-vs-noise-level curve over the "
                    f"clean area; 1.0 = no loss), averaged over that modality's noises at levels 0, {levels}, "
                    "on each fusion's first seed (and fold). "
                    "**effective robustness**: the mean relative robustness minus the value a line fitted across "
                    f"these fusions predicts from the clean {metric} (MultiBench); curves in robustness.png.")
        plot_robustness(cells, out_dir, out_dir / "robustness.png")
    text += ["", "![metric](metric.png)", "", "![cost](cost.png)", ""]
    if (out_dir / "robustness.png").is_file():
        text += ["![robustness curves](robustness.png)", ""]
    (out_dir / "comparison.md").write_text("\n".join(text))
    plot_metric(summary, metric, out_dir / "metric.png")
    plot_cost(summary, metric, out_dir / "cost.png")
    echo("\n" + table + f"\n\nresults: {out_dir / 'comparison.md'}, {out_dir / 'comparison.csv'}")
    return summary


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metric(summary: pd.DataFrame, metric: str, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(summary) + 2), 3.5))
    ax.bar(summary["fusion"], summary["mean"], yerr=summary["std"].fillna(0), capsize=4, color="#4c72b0")
    ax.set_ylabel(f"{metric} (mean ± std)")
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cost(summary: pd.DataFrame, metric: str, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.errorbar(summary["train_s"], summary["mean"], yerr=summary["std"].fillna(0), fmt="o", capsize=3)
    for row in summary.itertuples(index=False):
        ax.annotate(row.fusion, (row.train_s, row.mean), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("train seconds (mean)")
    ax.set_ylabel(metric)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_robustness(cells: pd.DataFrame, out_dir: Path, path: Path) -> None:
    """One panel per noise: each fusion's metric (mean over its cells) against the noise level."""
    frames = [pd.read_csv(f).assign(fusion=fusion) for cell, fusion in zip(cells["cell"], cells["fusion"])
              if (f := out_dir / "cells" / cell / "robustness.csv").is_file()]
    if not frames:
        return
    curves = pd.concat(frames, ignore_index=True)
    metric = [c for c in curves.columns if c not in ("modality", "noise", "level", "fusion")][0]
    mean = curves.groupby(["modality", "noise", "fusion", "level"], sort=False)[metric].mean().reset_index()
    panels = list(mean.groupby(["modality", "noise"], sort=False))
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), sharey=True, squeeze=False)
    styles = dict(zip(mean["fusion"].unique(), itertools.cycle(
        [{"color": color, "linestyle": dash} for dash in ("-", "--") for color in plt.cm.tab10.colors])))
    for ax, ((modality, noise), part) in zip(axes[0], panels):
        for fusion, line in part.groupby("fusion", sort=False):
            ax.plot(line["level"], line[metric], marker="o", markersize=3, label=fusion, **styles[fusion])
        ax.set_title(f"{modality}: {noise}", fontsize=9)
        ax.set_xlabel("noise level")
    axes[0][0].set_ylabel(metric)
    axes[0][-1].legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
