"""`mmfuse tune`: a hyper-parameter search over the config's `tune.space`, on Optuna.

    from mmfuse.tune import run_tune
    result = run_tune(load_config("configs/shape_scenes.yaml"), trials=20)

Each trial is the config with the searched fields set (through the same path as `--set`), trained
in this process with the Lightning loop and scored by the task's monitored metric on the
validation split, never the test split. Everything lives in RUN/tune: the study (`study.db`, so a
rerun resumes), one folder per trial (its TensorBoard logs), `best.yaml` (a config `mmfuse train`
takes as it is) and `report.md` with its plots. Optuna is imported only here (`mmfuse[tune]`).
"""
from .study import run_tune

__all__ = ["run_tune"]
