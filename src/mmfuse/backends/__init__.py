"""Where the parallel work of `compare`, `tune` and feature extraction runs: here, or on Ray.

    with open_backend("ray") as backend:           # a local Ray, started for this block
        run_comparison(config, ["concat", "film"], 2, None, out, backend=backend)

`local` is mmfuse without Ray: compare cells one after another in forkserver children, tune trials
in this process, frozen features extracted in this process. `ray` (ray_backend.py, the only module
that imports ray) runs the same cells and trials as Ray tasks and extracts features with Ray Data
into the same cache; what is computed is the same, only where differs.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator

from ..encoders.cache import FeatureCache
from ..errors import ConfigError, MmfuseError

BACKENDS = ("local", "ray")
Echo = Callable[[str], None]


class LocalBackend:
    name = "local"
    remote = False  # tune: trials run in this process (mmfuse.tune.study)
    encode = None  # FeatureCache's own in-process loop

    @staticmethod
    def check(config) -> None:
        """Nothing the local backend cannot run."""

    def run_cells(self, cell_dirs: list[Path], echo: Echo) -> Iterator[tuple[Path, str | None]]:
        """Each cell in a forkserver child, one after another: (cell_dir, None | why it failed)."""
        from .. import compare  # looked up per call: tests replace compare.launch_cell

        context = compare.cell_context()
        for number, cell_dir in enumerate(cell_dirs, 1):
            echo(f"[{number}/{len(cell_dirs)}] {cell_dir.name}: training")
            code = compare.launch_cell(cell_dir, context)
            yield cell_dir, None if code == 0 else f"exit code {code}"


class BackendCache(FeatureCache):
    """The feature cache, its missing entries computed by the backend's `encode` (None: here),
    and the stats of every call kept (`calls`), for commands that report them."""

    def __init__(self, root: str | Path, encode=None):
        super().__init__(root)
        self.encode = encode
        self.calls: list[dict[str, Any]] = []

    def features(self, encoder, values, load, *args, **kwargs):
        kwargs.setdefault("encode", self.encode)
        feats = super().features(encoder, values, load, *args, **kwargs)
        self.calls.append({"modality": encoder.modality, "variant": kwargs.get("variant"), **self.last_stats})
        return feats


def check_backend(name: str, address: str | None = None, cpus_per_task: float | None = None) -> None:
    """Fail before any work: an unknown backend, or a Ray option given without Ray."""
    if name not in BACKENDS:
        raise ConfigError(f"--backend {name!r}: expected one of {', '.join(BACKENDS)}")
    if name == "local" and (address is not None or cpus_per_task is not None):
        given = "--address" if address is not None else "--cpus-per-task"
        raise ConfigError(f"{given} is an option of --backend ray (the local backend takes none)")
    if cpus_per_task is not None and cpus_per_task <= 0:
        raise ConfigError(f"--cpus-per-task: expected a positive number, got {cpus_per_task}")


@contextlib.contextmanager
def open_backend(name: str = "local", *, address: str | None = None, num_cpus: int | None = None,
                 cpus_per_task: float | None = None, echo: Echo = print) -> Iterator[Any]:
    """The backend for one command. `ray`: connects to `address` (else $RAY_ADDRESS), or starts a
    local Ray for the block and stops it after; a Ray already initialised in this process is used
    as it is (and left running)."""
    check_backend(name, address, cpus_per_task)
    if name == "local":
        yield LocalBackend()
        return
    try:
        from .ray_backend import ray_session
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] != "ray":
            raise
        raise MmfuseError("--backend ray needs Ray: pip install 'mmfuse[ray]'") from None
    with ray_session(address=address, num_cpus=num_cpus, cpus_per_task=cpus_per_task or 1.0, echo=echo) as backend:
        yield backend
