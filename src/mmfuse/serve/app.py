"""The FastAPI app of `mmfuse serve`: wiring of settings, model loading, batcher, metrics, page."""
from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from ..modalities import MODALITIES
from .batcher import MicroBatcher
from .errors import install_handlers
from .limits import BodyLimit
from .metrics import Metrics
from .model_state import ModelState
from .routes import api, health
from .settings import ServeSettings

log = logging.getLogger("mmfuse.serve")
STATIC = Path(__file__).parent / "static"


def _default_loader(settings: ServeSettings) -> Callable[[], Any]:
    def load():
        from ..predictor import Predictor

        return Predictor.load(settings.model_dir)

    return load


def create_app(settings: ServeSettings, *, load: Callable[[], Any] | None = None) -> FastAPI:
    """`load` returns a Predictor (default: Predictor.load(settings.model_dir)); it runs in a
    background thread at startup so /health/live answers at once and /health/ready says 503
    until the model is there."""
    settings.check()
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.tmp = Path(tempfile.mkdtemp(prefix="mmfuse-serve-"))
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
    app.state.model = ModelState(load or _default_loader(settings))
    metrics.ready.set_function(lambda: float(app.state.model.status == "ready"))
    app.state.search = None
    if settings.index_dir is not None:
        from .search import attach_search  # guarded: the index and aligned models are optional

        attach_search(app, settings.index_dir)
    install_handlers(app, metrics.count_error)
    # add_middleware puts each new one outside the previous: BodyLimit is the outer one.
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s,
                       count_error=metrics.count_error)
    app.include_router(health)
    app.include_router(api)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return app


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
                self.metrics.requests.labels(endpoint=endpoint, status=str(status["code"])).inc()
                self.metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - started)


def serve(settings: ServeSettings) -> None:
    """Run the server in the foreground (uvicorn) until interrupted; MmfuseError if the model
    fails to load (the server stops rather than stay up without a model)."""
    from ..errors import MmfuseError
    from .security import check_bind
    from .server import make_server

    check_bind(settings.host, settings.token)
    app = create_app(settings)
    log.info("serving %s on http://%s:%d (batching %s, auth %s)", settings.model_dir, settings.host,
             settings.port, "on" if settings.batching else "off", "on" if settings.token else "off")
    server = make_server(app, host=settings.host, port=settings.port, exit_on_failed_load=True)
    server.run()
    failure = server.model_failed()
    if failure is not None:
        raise MmfuseError(f"the model failed to load: {failure}")
