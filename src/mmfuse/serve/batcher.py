"""Dynamic micro-batching: concurrent requests gathered into one forward pass.

Why our own ~100 lines instead of LitServe's built-in batching (`max_batch_size`, `batch_timeout`):
LitServe owns the whole server — it builds its own FastAPI app and runs the model in worker
processes it spawns, fed through multiprocessing queues. Our hardening (body cap, auth, JSON
errors naming the field, 503 + Retry-After from a bounded queue), the Prometheus registry and the
web page would have to be re-plumbed through its extension points, requests would be pickled
across a process boundary, and every worker process would hold its own copy of the model on a
2-core machine. An asyncio batcher in the app's own event loop with one model thread is small
enough to read in a minute and keeps everything in one process.

How: requests go into a bounded asyncio.Queue (full -> `Overloaded`, answered 503). One worker
task takes the first request, then keeps taking more until the batch holds `max_batch` rows or
`max_wait_s` has passed since that first request, and runs the batch in a single-thread executor,
so the event loop keeps accepting requests while the model works. With batching off it runs one
request at a time through the same path, which keeps the comparison fair.

One request must not fail its neighbours: when a batch raises, its requests are run again one by
one, and only the one that raises gets the exception. At shutdown (`close`) the requests still
waiting are answered `Closed` (a 503) at once instead of being cut off by the server.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence


class Overloaded(Exception):
    """The queue is full: the caller should answer 503 with Retry-After."""


class Closed(Exception):
    """The server is shutting down: the caller should answer 503."""


@dataclass
class _Job:
    rows: Sequence[Any]
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    def __init__(self, run: Callable[[list[Any]], list[Any]], *, max_batch: int, max_wait_s: float,
                 max_queue: int, enabled: bool = True, on_batch: Callable[[int, int, float], None] | None = None):
        self.run = run  # rows -> one result per row; called in the model thread
        self.max_batch, self.max_wait_s, self.enabled = max_batch, max_wait_s, enabled
        self.on_batch = on_batch  # (rows, requests, seconds) after each forward pass
        self.queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=max_queue)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmfuse-model")
        self._carry: _Job | None = None  # a job that did not fit the previous batch
        self._worker: asyncio.Task | None = None
        self.closed = False

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._loop(), name="mmfuse-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self.executor.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Refuse new jobs and answer the waiting ones `Closed`; the batch in the model finishes."""
        self.closed = True
        waiting = [self._carry] if self._carry is not None else []
        self._carry = None
        while not self.queue.empty():
            waiting.append(self.queue.get_nowait())
        for job in waiting:
            _fail(job, Closed("the server is shutting down"))

    def depth(self) -> int:
        return self.queue.qsize() + (self._carry is not None)

    async def submit(self, rows: Sequence[Any]) -> list[Any]:
        """The results for `rows`, computed in some batch. Cancelling the caller drops the job."""
        return await self.submit_nowait(rows)

    def submit_nowait(self, rows: Sequence[Any]) -> asyncio.Future:
        """The future of `rows`' results (Closed / Overloaded at once); cancelling it drops the job."""
        if self.closed:
            raise Closed("the server is shutting down")
        job = _Job(rows, asyncio.get_running_loop().create_future())
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            raise Overloaded(f"{self.queue.maxsize} requests are already waiting") from None
        return job.future

    async def _next_batch(self) -> list[_Job]:
        first = self._carry or await self.queue.get()
        self._carry = None
        batch, size = [first], len(first.rows)
        if not self.enabled:
            return batch
        deadline = time.monotonic() + self.max_wait_s
        while size < self.max_batch:
            try:
                job = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), left)
                except TimeoutError:
                    break
            if size + len(job.rows) > self.max_batch:
                self._carry = job  # keeps forward passes within max_batch rows
                break
            batch.append(job)
            size += len(job.rows)
        return batch

    async def _loop(self) -> None:
        while True:
            batch = [job for job in await self._next_batch() if not job.future.done()]  # drop timed-out jobs
            if not batch:
                continue
            try:
                await self._forward(batch)
            except Exception as error:  # noqa: BLE001 - handed to the request that caused it
                if len(batch) == 1:
                    _fail(batch[0], error)
                    continue
                # Which request broke the pass? Run each on its own; only the culprit fails.
                for job in batch:
                    try:
                        await self._forward([job])
                    except Exception as own:  # noqa: BLE001
                        _fail(job, own)

    async def _forward(self, batch: list[_Job]) -> None:
        """One forward pass over the batch's rows; each job gets its slice of the results."""
        rows = [row for job in batch for row in job.rows]
        started = time.perf_counter()
        results = await asyncio.get_running_loop().run_in_executor(self.executor, self.run, rows)
        if self.on_batch is not None:
            self.on_batch(len(rows), len(batch), time.perf_counter() - started)
        start = 0
        for job in batch:
            if not job.future.done():
                job.future.set_result(results[start : start + len(job.rows)])
            start += len(job.rows)


def _fail(job: _Job, error: BaseException) -> None:
    if not job.future.done():
        job.future.set_exception(error)
