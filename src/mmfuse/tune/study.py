"""The Optuna study behind `mmfuse tune`: its storage in RUN/tune/study.db, resuming, the objective.

SQLite (Optuna's RDBStorage) rather than the journal file: each write is a transaction, so a kill
mid-write loses at most that write and never leaves the file half-written or a lock file behind
(the OS drops SQLite's locks with the process; a journal file's lock file outlives a kill).
With `--backend ray` each trial is a Ray task that opens the same storage (`one_trial`); SQLite
serialises their writes, on one machine or a shared filesystem (docs/distributed.md).
"""
from __future__ import annotations

import contextlib
import fcntl
import shutil
import signal
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna
from optuna.trial import FrozenTrial, TrialState
# optuna-integration >= 4 subclasses `lightning.pytorch`'s Callback (the `lightning` package we train
# with); before 4 it took `pytorch_lightning`'s, whose callbacks our Trainer would refuse.
from optuna_integration import PyTorchLightningPruningCallback

from ..compare import _comparable, _first_difference
from ..atomic import write_atomic
from ..config import Config, TuneConfig, dump_config
from ..errors import ConfigError, MmfuseError, brief
from ..tasks import create_task
from .report import trial_line, trials_frame, write_report
from .space import base_values, check_space, suggest, trial_config

STUDY = "mmfuse"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what counts towards --trials


def run_tune(config: Config, trials: int | None = None, *, echo: Callable[[str], None] = print,
             backend=None) -> dict[str, Any]:
    """Run trials until the study in RUN/tune has `trials` finished ones (default tune.trials),
    then write best.yaml and report.md. A rerun resumes: finished trials are kept, not rerun.
    `backend` (mmfuse.backends.open_backend): trials as Ray tasks with `ray`; default here."""
    check_space(config)
    if backend is not None:
        backend.check(config)
    trials = trials or config.tune.trials
    folder = Path(config.output_dir) / "tune"
    folder.mkdir(parents=True, exist_ok=True)
    monitor = create_task(config.task).monitor
    # trial_line says what its INFO lines say, and a failed trial's error is raised (one line for
    # ours), not also logged with its traceback.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with locked(folder):
        study = open_study(config, folder)
        done = sum(t.state in FINISHED for t in study.trials)
        remaining = max(0, trials - done)
        if done:
            echo(f"resuming {folder / 'study.db'}: {done} trial(s) finished, {remaining} to run")
        if remaining:
            run_trials(study, config, folder, remaining, monitor, echo, backend)
        frame = trials_frame(study, list(config.tune.space), monitor)
        best = best_trial(study)
        best_path = None
        if best is not None:
            # The base config with the best values; trained into RUN/tune/best, not over RUN/model.
            best_config = trial_config(config, best.params | {"output_dir": str(folder / "best")})
            best_path = write_atomic(folder / "best.yaml", dump_config(best_config))
        report = write_report(study, frame, folder, monitor, best)
    return {"study": study, "trials": frame, "best": best, "best_config": best_path, "report": report,
            "storage": folder / "study.db"}


def run_trials(study: optuna.Study, config: Config, folder: Path, n: int, monitor: str, echo, backend=None) -> None:
    from ..predictor import Predictor
    from ..train import TrainingInterrupted

    splits = Predictor(config).splits()  # read and split once: every trial sees the same rows
    if not len(splits["val"]):
        raise ConfigError("tune scores each trial on the validation split, which is empty: set "
                          "data.val_fraction (or give val rows in the split column)")
    if getattr(backend, "remote", False):
        backend.run_trials(study, config, folder, splits, n, monitor, echo)
        return
    # Seeded past the trials already run, so a resumed study does not redraw the first trials' values.
    study.sampler = make_sampler(config.tune, len(study.trials))
    objective = make_objective(config, folder, splits, monitor)
    try:
        study.optimize(objective, n_trials=n, timeout=config.tune.timeout_s, gc_after_trial=True,
                       callbacks=[lambda s, t: echo(trial_line(t, monitor))])
    except TrainingInterrupted as stop:  # Ctrl+C or SIGTERM inside Lightning: Optuna marked the trial failed
        error = MmfuseError(f"tuning stopped by {signal.Signals(stop.signum).name}; the trial it was in is "
                            "marked failed: run the same command again to resume")
        error.exit_code = stop.exit_code
        raise error from None


def make_objective(config: Config, folder: Path, splits: dict, monitor: str) -> Callable[[optuna.Trial], float]:
    """A trial: the config with the trial's values, trained on the train split, scored on val."""
    from ..predictor import Predictor

    def objective(trial: optuna.Trial) -> float:
        values = {key: suggest(trial, key, spec) for key, spec in config.tune.space.items()}
        trial_dir = folder / f"trial_{trial.number:03d}"
        trial_cfg = trial_config(config, values | {"output_dir": str(trial_dir), "train.progress_bar": False},
                                 origin=f"trial {trial.number}")
        try:
            predictor = Predictor(trial_cfg).fit(splits["train"], splits["val"],
                                                 callbacks=[PyTorchLightningPruningCallback(trial, monitor)])
        finally:
            # Only the trial's TensorBoard logs stay: its model is best.yaml retrained, and every
            # trial's checkpoints would fill a disk.
            shutil.rmtree(trial_dir / "checkpoints", ignore_errors=True)
        # The score of the weights a `train` of this config keeps (train.keep), as Lightning logged it.
        return predictor.fit_summary[f"{'last' if trial_cfg.train.keep == 'last' else 'best'}_{monitor}"]

    return objective


def one_trial(config: Config, folder: str, splits: dict, monitor: str, sampler_offset: int) -> dict[str, Any]:
    """One trial of RUN/tune's study from another process (a Ray task): {"number", "error": None | a line}.

    Each process opens the storage itself; SQLite serialises the writes of trials running at once
    (each waits up to `storage`'s timeout for the lock). The driver holds RUN/tune/.lock meanwhile."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    folder = Path(folder)
    study = optuna.load_study(study_name=STUDY, storage=storage(folder), pruner=make_pruner(config.tune),
                              sampler=make_sampler(config.tune, sampler_offset))
    objective, numbers = make_objective(config, folder, splits, monitor), []

    def numbered(trial: optuna.Trial) -> float:
        numbers.append(trial.number)
        return objective(trial)

    try:
        study.optimize(numbered, n_trials=1, gc_after_trial=True)
    except Exception as error:  # a line for the driver to print, not a traceback from another process
        line = str(error) if isinstance(error, MmfuseError) else brief(error)
        return {"number": numbers[0] if numbers else "?", "error": line}
    return {"number": numbers[0], "error": None}


def started_trials(study: optuna.Study) -> int:
    """Trials a process has asked for so far (an enqueued, waiting one is not yet): each Ray task
    asks for one, so seeding a task's sampler with this count + its place in the queue gives every
    task of the study's life its own seed, across resumes too."""
    return sum(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False))


def storage(folder: Path) -> optuna.storages.RDBStorage:
    """RUN/tune/study.db; a writer waits up to 60 s for SQLite's lock (trials in parallel on Ray),
    not the driver's default 5 s."""
    return optuna.storages.RDBStorage(f"sqlite:///{folder / 'study.db'}",
                                      engine_kwargs={"connect_args": {"timeout": 60}})


def open_study(config: Config, folder: Path) -> optuna.Study:
    """RUN/tune/study.db's study, created on the first run; refused if made from another config."""
    mode = create_task(config.task).monitor_mode
    study = optuna.create_study(storage=storage(folder), study_name=STUDY, load_if_exists=True,
                                direction="maximize" if mode == "max" else "minimize", pruner=make_pruner(config.tune))
    wanted, stored = searched(config), study.user_attrs.get("config")
    if stored is None:
        study.set_user_attr("config", wanted)
        if (own := base_values(config)) is not None:
            study.enqueue_trial(own)  # trial 0: the config as it is, the baseline every trial is compared to
    elif stored != wanted:  # mixing trials of two configs would make the best one meaningless
        raise ConfigError(f"{folder / 'study.db'} holds a study of another config "
                          f"({_first_difference(stored, wanted)}): tune into another output_dir, or delete {folder}")
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # We hold the lock, so no process runs this trial: it was killed mid-way. Failed, it is not reused.
        study.tell(trial.number, state=TrialState.FAIL)
    return study


def searched(config: Config) -> dict[str, Any]:
    """What the trials' results depend on: the config less where things are written and how long to search."""
    raw = _comparable(config.model_dump(mode="json"))
    raw["tune"] = {k: v for k, v in raw["tune"].items() if k not in ("trials", "timeout_s")}
    raw["train"].pop("progress_bar")
    return raw


def make_sampler(tune: TuneConfig, offset: int) -> optuna.samplers.BaseSampler:
    seed = tune.seed + offset
    return optuna.samplers.TPESampler(seed=seed) if tune.sampler == "tpe" else optuna.samplers.RandomSampler(seed=seed)


def make_pruner(tune: TuneConfig) -> optuna.pruners.BasePruner:
    if tune.pruner == "none":
        return optuna.pruners.NopPruner()
    # A step is an epoch: the pruning callback reports the monitored metric after each validation.
    return optuna.pruners.MedianPruner(n_warmup_steps=tune.warmup_epochs)


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best complete trial (a pruned one's value is of an unfinished run); None before any."""
    return study.best_trial if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) else None


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """One tuning process per run directory (its trials left RUNNING are then known to be dead)."""
    with open(folder / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MmfuseError(f"{folder} is being tuned by another process: wait for it, "
                              "or tune into another output_dir") from None
        yield  # the lock goes with the handle (and with the process, if it is killed)
