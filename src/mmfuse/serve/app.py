"""The FastAPI app of `mmfuse serve`: wiring of settings, model loading, batcher, metrics, page.
A caption model's app is this one with its own model runner and routes (serve/captions.py)."""
from __future__ import annotations

import contextlib
import gc
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from ..captioning.artifact import is_caption_model
from ..modalities import MODALITIES
from .batcher import MicroBatcher
from .errors import install_handlers
from .fastlane import FastLane
from .limits import BodyLimit
from .metrics import Metrics
from .model_state import ModelState
from .openapi import install_openapi
from .routes import api, health, monitoring
from .settings import ServeSettings

log = logging.getLogger("mmfuse.serve")
STATIC = Path(__file__).parent / "static"


def _default_loader(settings: ServeSettings) -> Callable[[], Any]:
    def load():
        from ..predictor import Predictor

        predictor = Predictor.load(settings.model_dir)
        # Ready means ready: no first request waits ~5 s for a text model loaded on first use.
        for encoder in predictor.model.encoders.values():
            encoder.load_weights()
        return predictor

    return load


def create_app(settings: ServeSettings, *, load: Callable[[], Any] | None = None) -> FastAPI:
    """`load` returns a Predictor (default: Predictor.load(settings.model_dir)), or for a caption
    model directory (captioner, config) (default: load_captioner(settings.model_dir)); it runs in
    a background thread at startup so /health/live answers at once and /health/ready says 503
    until the model is there."""
    settings.check()
    metrics = Metrics()
    caption_model = is_caption_model(settings.model_dir)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.tmp = Path(tempfile.mkdtemp(prefix="mmfuse-serve-", dir=upload_folder()))
        app.state.model.start()
        app.state.batcher = batcher = MicroBatcher(
            lambda rows: app.state.model.runner(rows), max_batch=settings.max_batch,
            max_wait_s=settings.max_wait_ms / 1000, max_queue=settings.max_queue, enabled=settings.batching,
            on_batch=_record_batch(metrics))
        metrics.queue_depth.set_function(batcher.depth)
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            shutil.rmtree(app.state.tmp, ignore_errors=True)

    app = FastAPI(title="mmfuse", summary="Multimodal model server (" + " + ".join(MODALITIES) + ")", lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = metrics
    if caption_model:  # /caption and its own /info instead of /info, /predict and /embed
        from .captions import caption_routes as model_routes, caption_state

        app.state.model = caption_state(settings, load)
    else:
        app.state.model, model_routes = ModelState(load or _default_loader(settings)), api
    metrics.ready.set_function(lambda: float(app.state.model.status == "ready"))
    app.state.search = None
    if settings.index_dir is not None:
        from .search import attach_search  # guarded: the index and aligned models are optional

        attach_search(app, settings.index_dir)
    install_handlers(app, metrics.count_error)
    # add_middleware puts each new one outside the previous: BodyLimit is the outer one.
    if not caption_model:  # it answers POST /predict, which a caption model has not
        app.add_middleware(FastLane)
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s,
                       count_error=metrics.count_error)
    app.include_router(health)
    app.include_router(monitoring)
    app.include_router(model_routes)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    install_openapi(app)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return app


def upload_folder() -> str | None:
    """Where uploads are kept while their request runs: a RAM file system when there is one with
    room (creating and deleting a file there costs half what it does on a disk), else the
    system's temp folder. The uploads are in memory anyway, and each is deleted with its request."""
    shm = "/dev/shm"
    try:
        stat = os.statvfs(shm)
    except OSError:
        return None
    roomy = stat.f_bavail * stat.f_frsize >= 1024**3
    return shm if roomy and os.access(shm, os.W_OK | os.X_OK) else None


def _record_batch(metrics: Metrics):
    def record(rows: int, requests: int, seconds: float) -> None:
        metrics.batch_rows.observe(rows)
        metrics.batch_requests.observe(requests)
        metrics.forward_seconds.observe(seconds)

    return record


class RequestMetrics:
    """Counts and times every request by route (pure ASGI: it must not wrap `receive` in another
    task, or an over-cap body would surface as a parse error instead of a 413)."""

    def __init__(self, app, *, metrics: Metrics):
        self.app, self.metrics = app, metrics
        self.series: dict[tuple[str, int], tuple] = {}  # bounded: route templates x statuses

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), {"code": 500}

        async def send_and_note(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            # Route templates, not raw paths, so a scan of random URLs cannot blow up the label set.
            endpoint = getattr(scope.get("route"), "path", None) or "unmatched"
            if not endpoint.startswith("/static"):
                count, latency = self._series(endpoint, status["code"])
                count.inc()
                latency.observe(time.perf_counter() - started)

    def _series(self, endpoint: str, status: int):
        """The request counter and latency histogram of (endpoint, status), looked up once each."""
        key = (endpoint, status)
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = (self.metrics.requests.labels(endpoint=endpoint, status=str(status)),
                                         self.metrics.latency.labels(endpoint=endpoint))
        return series


def model_threads() -> int:
    """Give the model's matrix maths one core fewer than the process may use (at least one), for
    the event loop, which parses, validates and answers every request: with a thread per core, the
    model's threads spin-wait whenever the event loop holds one of the cores (on 2 cores a third of
    the server's CPU time: 5.4 -> 3.6 ms per request in bench/serve_load.py). OMP_NUM_THREADS /
    MKL_NUM_THREADS, when set, decide instead."""
    import torch

    if not any(os.environ.get(name) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")):
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, cores - 1))
    return torch.get_num_threads()


def serve(settings: ServeSettings) -> None:
    """Run the server in the foreground (uvicorn) until interrupted; MmfuseError if the model
    fails to load (the server stops rather than stay up without a model)."""
    from ..errors import MmfuseError
    from .security import check_bind
    from .server import make_server

    check_bind(settings.host, settings.token)
    model_threads()
    app = create_app(settings)
    # The model's ~500k Python objects (torch modules, tokenizer, ...) live as long as the process:
    # out of the garbage collector's sight, a full collection no longer walks them, which took
    # ~0.2 s each time, every request waiting (the p99 latency under load).
    app.state.model.after_load = gc.freeze
    log.info("serving %s on http://%s:%d (batching %s, auth %s)", settings.model_dir, settings.host,
             settings.port, "on" if settings.batching else "off", "on" if settings.token else "off")
    server = make_server(app, host=settings.host, port=settings.port, exit_on_failed_load=True)
    server.run()
    failure = server.model_failed()
    if failure is not None:
        raise MmfuseError(f"the model failed to load: {failure}")
