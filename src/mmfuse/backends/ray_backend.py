"""`--backend ray`: compare cells and tune trials as Ray tasks, frozen features through Ray Data.

The only module of mmfuse that imports ray (`pip install 'mmfuse[ray]'`). What runs remotely is
mmfuse's own code: a cell is `compare.launch_cell` (the forkserver child that runs `run_cell`, as
the local backend does), a trial is `tune.study.one_trial` against the study's storage, and an
encoder actor runs `encoders.cache.encode_inputs`; the feature cache, cell.json files and the
study are written where the local backend writes them. So results do not depend on the backend,
and on a cluster the run directory and `cache_dir` must be on storage every node sees.

Nothing here imports `ray.train.lightning` or `pytorch_lightning`: trials train with mmfuse's
`lightning.pytorch` loop and its own callbacks (docs/distributed.md).
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Callable, Hashable, Iterator

import numpy as np
import ray
import ray.data
import torch

from ..encoders.cache import encode_inputs
from ..errors import ConfigError, MmfuseError, brief

Echo = Callable[[str], None]
MB = 1 << 20
# Cells and trials pass paths and small records through Ray's object store; extraction streams
# feature batches back. Ray's default (30% of RAM) asks a container's /dev/shm for more than it has.
STORE_CAP = 1024 * MB
STORE_FLOOR = 128 * MB  # Ray refuses less than 75 MB
SHM_ENOUGH = 512 * MB
FAILED = "mmfuse encoder actor failed: "  # marks an actor's error in the text Ray Data passes on


# ----- starting or joining Ray ------------------------------------------------------------------

def shm_free(path: str = "/dev/shm") -> int | None:
    """Free bytes of /dev/shm, where Ray keeps its object store on Linux (None: no such folder)."""
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def object_store_bytes(free: int | None) -> int:
    """A modest store: half of /dev/shm, between STORE_FLOOR and STORE_CAP."""
    return STORE_CAP if free is None else max(STORE_FLOOR, min(STORE_CAP, free // 2))


def shm_note(free: int | None, store: int) -> str | None:
    """One clear line when /dev/shm is small (Docker's default is 64 MB), else None."""
    if free is None or free >= SHM_ENOUGH:
        return None
    where = " and goes to /tmp (slower)" if store > free else ""
    return (f"note: /dev/shm has only {free / MB:.0f} MB free (a container's default is 64 MB): Ray's object "
            f"store is capped at {store / MB:.0f} MB{where}; give the container more (docker run --shm-size=2g)")


@contextlib.contextmanager
def ray_session(*, address: str | None, num_cpus: int | None, cpus_per_task: float,
                echo: Echo) -> Iterator["RayBackend"]:
    """Ray for one command: joined at `address` (or $RAY_ADDRESS) and left running, or started here
    (`address="local"` even if a `ray start` cluster runs on this machine) and stopped after."""
    address = address or os.environ.get("RAY_ADDRESS")
    started = not ray.is_initialized()
    if started:
        quiet = {"logging_level": logging.WARNING, "log_to_driver": False}  # cells write log.txt files
        try:
            if address:
                if (problem := unreachable(address)) is not None:
                    raise ConnectionError(problem)
                ray.init(address=address, **quiet)
                where = f"Ray at {address}"
            else:
                free = shm_free()
                store = object_store_bytes(free)
                if (note := shm_note(free, store)) is not None:
                    echo(note)
                ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, object_store_memory=store,
                         **quiet)
                where = f"a local Ray started for this command (object store {store / MB:.0f} MB)"
        except Exception as error:  # ConnectionError, ValueError, RuntimeError: one line, not Ray's traceback
            raise MmfuseError(f"--backend ray: could not {'reach Ray at ' + address if address else 'start Ray'}: "
                              f"{brief(error)}") from None
    else:
        where = "the Ray this process already runs"
    # Ray Data prints a progress bar and INFO lines per dataset; the command prints its own lines.
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"
    backend = RayBackend(cpus_per_task)
    echo(f"backend: {where}; {backend.cpus():g} CPUs, {cpus_per_task:g} per task")
    try:
        yield backend
    finally:
        if started:
            ray.shutdown()


def unreachable(address: str, timeout_s: float = 10.0) -> str | None:
    """Why nothing answers at a `host:port` address (None: something does, or the address is not one).
    ray.init would otherwise wait minutes for a head node that is not there, printing retries."""
    host_port = address.removeprefix("ray://")
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        return None  # "auto", "local": Ray resolves those itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as error:
        return (f"nothing answers at {host_port} ({error.strerror or error}); start the head node there with "
                f"`ray start --head --port {port}`, or check the address")
    return None


# ----- the tasks (module functions: Ray pickles them by reference) ------------------------------

def cell_task(cell_dir: str) -> int:
    """A compare cell in a forkserver child of this Ray worker, exactly as the local backend runs it
    (own process: own peak memory, a crash kills the cell, not the worker); its exit code."""
    from ..compare import cell_context, launch_cell

    return launch_cell(Path(cell_dir), cell_context())


def trial_task(threads: int, *args) -> dict:
    """A tune trial in this Ray worker (tune.study.one_trial), with the task's CPUs as torch threads:
    a reused worker keeps the thread count torch read at its first import."""
    from ..tune.study import one_trial

    torch.set_num_threads(threads)
    return one_trial(*args)


class EncoderActor:
    """One encoder per Ray Data actor: unpickled once (the driver's own object, so its weights and
    fingerprint are those of the cache folder), then one forward pass per row, a chunk of inputs.
    Out: one row per input ("i": its place in the driver's list, "pooled", "tokens" if any)."""

    def __init__(self, encoder, load: Callable[[list[Any]], list[Any]], device: str, threads: int):
        self.encoder, self.load, self.device = encoder, load, device
        torch.set_num_threads(threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        places, pooled, tokens = [], [], []
        for chunk, values in zip(batch["i"], batch["value"]):
            part = [(int(i), value) for i, value in zip(chunk, values)]
            try:
                entries = encode_inputs(self.encoder, part, self.load, len(part), self.device)
            except Exception as error:
                # Ray Data hands the driver its own exception, with ours only in the traceback text.
                raise RuntimeError(FAILED + brief(error)) from None
            for i, (vector, real_tokens) in entries.items():
                places.append(i)
                pooled.append(vector.numpy())
                tokens.append(None if real_tokens is None else real_tokens.numpy())
        out: dict[str, Any] = {"i": np.array(places), "pooled": np.stack(pooled)}
        if tokens[0] is not None:
            out["tokens"] = tokens  # ragged: a variable-shaped column
        return out


# ----- the backend ------------------------------------------------------------------------------

class RayBackend:
    name = "ray"
    remote = True  # tune: trials are Ray tasks

    def __init__(self, cpus_per_task: float = 1.0):
        self.cpus_per_task = cpus_per_task

    @staticmethod
    def check(config) -> None:
        """Before any work: a cell or trial is one process in a Ray task. DDP would have Lightning
        start the command line again from inside a Ray worker (whose command line is Ray's), and
        wait for processes that never come."""
        devices, nodes = config.train.devices, config.train.num_nodes
        if str(devices) not in ("1", "auto") or nodes != 1:
            raise ConfigError(f"--backend ray trains each cell or trial in one process: train.devices must be 1 or "
                              f"auto and train.num_nodes 1 (got {devices} and {nodes})")

    def cpus(self) -> float:
        return ray.cluster_resources().get("CPU", 1.0)

    @staticmethod
    def largest_node_cpus() -> float:
        return max((node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node["Alive"]), default=1.0)

    def slots(self) -> int:
        """How many tasks run at once (more queue in Ray)."""
        return max(1, int(self.cpus() // self.cpus_per_task))

    # --- compare ---

    def run_cells(self, cell_dirs: list[Path], echo: Echo) -> Iterator[tuple[Path, str | None]]:
        """Every cell as a Ray task at once; (cell_dir, None | why it failed) as each ends."""
        # One retry: a node lost mid-cell reruns it elsewhere (a cell writes cell.json last).
        task = ray.remote(num_cpus=self.cpus_per_task, max_retries=1)(cell_task)
        pending = {task.remote(str(cell_dir.resolve())): cell_dir for cell_dir in cell_dirs}
        echo(f"{len(cell_dirs)} cells sent to Ray, {self.cpus_per_task:g} CPU each: up to {self.slots()} at once")
        while pending:
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            cell_dir = pending.pop(ready)
            try:
                code = ray.get(ready)
            except ray.exceptions.RayError as error:  # the worker died (e.g. Ray's OOM killer)
                yield cell_dir, f"Ray: {brief(error)}"
                continue
            yield cell_dir, None if code == 0 else f"exit code {code}"

    # --- tune ---

    def run_trials(self, study, config, folder: Path, splits: dict, n: int, monitor: str, echo: Echo) -> None:
        """`n` trials as Ray tasks, at most slots() at once, each one `study.optimize(n_trials=1)`
        against the study's storage (tune.study.one_trial).

        Tasks over the Optuna study rather than Ray Tune with OptunaSearch: the study, its resume,
        trial 0 (the config's own values), the median pruner and report.md stay exactly those of the
        local backend, and no Ray Tune callback enters the Lightning loop."""
        from ..tune.report import trial_line
        from ..tune.study import started_trials

        task = ray.remote(num_cpus=self.cpus_per_task, max_retries=0)(trial_task)
        threads = max(1, int(self.cpus_per_task))
        shared = ray.put(splits)  # once, not once per trial
        where = str(folder.resolve())  # workers may start in another folder
        offset, start, timeout = started_trials(study), time.monotonic(), config.tune.timeout_s
        pending: dict[Any, int] = {}
        failed: list[dict] = []
        submitted = 0
        try:
            while True:
                # Submitted as slots free up, not all at once: TPE then sees the trials that finished,
                # and tune.timeout_s stops new trials as it does locally.
                while (len(pending) < self.slots() and submitted < n and not failed
                       and (timeout is None or time.monotonic() - start < timeout)):
                    # Each task's sampler seeded apart: two trials starting together must not draw alike.
                    pending[task.remote(threads, config, where, shared, monitor, offset + submitted)] = submitted
                    submitted += 1
                if not pending:
                    break
                (ready,), _ = ray.wait(list(pending), num_returns=1)
                pending.pop(ready)
                result = self._trial_result(ready)
                if result["error"] is None:
                    echo(trial_line(study.trials[result["number"]], monitor))
                else:
                    failed.append(result)
                    echo(f"trial {result['number']}: failed: {result['error']}")
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref, force=True)
            error = MmfuseError("tuning stopped by SIGINT; run the same command again to resume (the trials "
                                "that were running are then marked failed)")
            error.exit_code = 130
            raise error from None
        if failed:
            first = min(failed, key=lambda r: r["number"] if isinstance(r["number"], int) else float("inf"))
            raise MmfuseError(f"trial {first['number']} failed on Ray: {first['error']} ({len(failed)} trial(s) "
                              "failed; run the same command again to resume)")

    @staticmethod
    def _trial_result(ref) -> dict:
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as error:  # the worker died: one_trial could not say which trial
            return {"number": "?", "error": f"Ray: {brief(error)}"}

    # --- feature extraction ---

    def encode(self, encoder, items: list[tuple[Hashable, Any]], load, batch_size: int, device) -> dict:
        """FeatureCache's EncodeFn on Ray Data: a pool of EncoderActor over the missing inputs; the
        entries come back to this process, which stores them in the cache as the local backend does."""
        if len(items) <= batch_size:
            # One batch: starting actors (a worker, torch, the encoder) costs more than it saves.
            return encode_inputs(encoder, items, load, batch_size, device)
        gpu = str(device).startswith("cuda")
        # Each actor computes with the threads this process would use: a convolution's result depends
        # on the thread count (and batch size) in the last float digits, and the features must be
        # the local backend's exactly. It takes as many CPUs, up to the largest node's.
        threads = max(1, min(torch.get_num_threads(), int(self.largest_node_cpus())))
        actors = max(1, min(int(self.cpus() // threads), math.ceil(len(items) / batch_size)))
        # One row per batch of the in-process loop, the same inputs together (the batch size, too,
        # shows in the last digits). "i" places each input in `items` (keys may be any hashable).
        rows = [{"i": list(range(first, min(first + batch_size, len(items)))),
                 "value": [value for _, value in items[first : first + batch_size]]}
                for first in range(0, len(items), batch_size)]
        features = ray.data.from_items(rows).map_batches(
            EncoderActor, fn_constructor_kwargs={"encoder": encoder, "load": load, "device": "cuda" if gpu else "cpu",
                                                "threads": threads},
            batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=threads, num_gpus=1 if gpu else 0)
        out = {}
        try:
            for batch in features.iter_batches(batch_size=None, batch_format="numpy"):
                tokens = batch.get("tokens")
                for row, i in enumerate(batch["i"].tolist()):
                    out[items[i][0]] = (tensor(batch["pooled"][row]), None if tokens is None else tensor(tokens[row]))
        except Exception as error:  # Ray Data's UserCodeException: our line is in its text only
            found = re.search(re.escape(FAILED) + "(.*)", str(error))
            cause = found.group(1) if found else brief(error)
            raise MmfuseError(f"{encoder.modality} features on Ray Data failed: {cause}") from None
        return out


def tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array, dtype=np.float32))  # a copy: Ray's arrays may be read-only
