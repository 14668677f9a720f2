"""What a study found: the trials table, the best trial, and two plots, in RUN/tune/report.md."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from ..atomic import write_atomic
from ..compare import _pyplot


def seconds(trial: FrozenTrial) -> float | None:
    if trial.datetime_start is None or trial.datetime_complete is None:
        return None
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def trials_frame(study: optuna.Study, keys: list[str], monitor: str) -> pd.DataFrame:
    """One row per trial: number, state, each searched field, the monitored metric, seconds."""
    return pd.DataFrame([{"trial": t.number, "state": t.state.name.lower(), **{k: t.params.get(k) for k in keys},
                          monitor: t.value, "seconds": round(seconds(t) or math.nan, 1)} for t in study.trials],
                        columns=["trial", "state", *keys, monitor, "seconds"])


def cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def markdown_table(frame: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(frame.columns) + " |", "|---" * len(frame.columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.astype(object).itertuples(index=False)]
    return "\n".join(lines)


def trial_line(trial: FrozenTrial, monitor: str) -> str:
    value = "" if trial.value is None else f" {monitor} {cell(trial.value)}"
    took = seconds(trial)
    params = ", ".join(f"{k}={cell(v)}" for k, v in trial.params.items())
    took = f" in {took:.1f} s" if took else ""
    return f"trial {trial.number}: {trial.state.name.lower()}{value}{took} ({params})"


def write_report(study: optuna.Study, frame: pd.DataFrame, folder: Path, monitor: str,
                 best: FrozenTrial | None) -> Path:
    states = frame["state"].value_counts()
    counts = ", ".join(f"{states.get(s, 0)} {s}" for s in ("complete", "pruned", "fail") if states.get(s, 0))
    goal = "higher" if study.direction == optuna.study.StudyDirection.MAXIMIZE else "lower"
    lines = ["# Tuning", "", f"{len(frame)} trials ({counts or 'none run'}) in {frame['seconds'].sum():.0f} s of "
             f"training. Each is scored by {monitor} on the validation split ({goal} is better); the study is "
             "`study.db` (rerun the command to resume it).", "", "## Best trial", ""]
    if best is None:
        lines.append("No trial has completed yet: no best.yaml.")
    else:
        lines.append(f"Trial {best.number}: {monitor} {cell(best.value)} with "
                     + ", ".join(f"`{k}: {cell(v)}`" for k, v in best.params.items())
                     + ". Its config is `best.yaml` (`mmfuse train best.yaml` trains it into `best/`).")
    lines += ["", "## Trials", "", markdown_table(frame), "", "## Optimisation history", ""]
    plot_history(study, monitor, folder / "history.png")
    lines += ["![optimisation history](history.png)", "", "## Parameter importances", ""]
    lines.append(plot_importances(study, folder / "importances.png"))
    return write_atomic(folder / "report.md", "\n".join(lines) + "\n")


def plot_history(study: optuna.Study, monitor: str, path: Path) -> None:
    """Each finished trial's value, and the best complete value so far."""
    done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.value is not None]
    better = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
    best, curve = None, []
    for t in done:
        if t.state == TrialState.COMPLETE:
            best = t.value if best is None else better(best, t.value)
        curve.append(best)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for state, color in ((TrialState.COMPLETE, "#4c72b0"), (TrialState.PRUNED, "#bbbbbb")):
        shown = [t for t in done if t.state == state]
        if shown:
            ax.scatter([t.number for t in shown], [t.value for t in shown], color=color, s=18,
                       label=state.name.lower())
    ax.step([t.number for t in done], [float("nan") if v is None else v for v in curve], where="post",
            color="#dd8452", label="best so far")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("trial")
    ax.set_ylabel(monitor)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_importances(study: optuna.Study, path: Path) -> str:
    """fANOVA importances of the searched fields (report.md's line for them): it needs two complete trials."""
    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < 2:
        return "Not enough complete trials (two are needed) to estimate importances."
    try:
        # fANOVA, seeded: Optuna 5's default (PED-ANOVA) needs many more trials than a small study has.
        importances = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (ImportError, ValueError, RuntimeError) as error:  # no scikit-learn, or one value of every field
        return f"Importances could not be estimated: {error}"
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 0.4 * len(importances) + 1.2))
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names], color="#4c72b0")
    ax.set_xlabel("importance (fANOVA)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return "![parameter importances](importances.png)"
