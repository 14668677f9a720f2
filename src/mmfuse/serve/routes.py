"""The HTTP endpoints: health, info, metrics, predict (JSON and multipart), embed. A caption
model's server has health and metrics from here, its own info and /caption (serve/captions.py).

No modality is named here: rows, form parts and contributions follow `mmfuse.modalities.MODALITIES`.

A request's `timeout_s` starts once its body is in and covers decoding its inputs (in a worker
thread; a few small images on the event loop), the queue and the model: past it the answer is 504
at once, and work still running for it stops at the next row (rows it finishes anyway are deleted).

With `explain=true` each row is also explained (heatmap, word attributions, Shapley values;
serve/explanations.py), at most `max_explain_rows` rows per request.

Each answered prediction is logged at DEBUG (with `--mask-pii`, its text masked); the access log
has every request at INFO.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import time
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from ..modalities import MODALITIES, Modality
from ..privacy import masker_for
from .batcher import Closed, Overloaded
from .bodies import StrictRoute
from .errors import ApiError, invalid, unavailable
from .explanations import check_explain_rows
from .inputs import ModelRow, check_request_pixels, decode_base64, discard, make_row
from .privacy import log_preview
from .runner import ModelRunner, RowResult, refused
from .schemas import (MAX_TOP_K, Contribution, EmbedRequest, EmbedResponse, ErrorBody, Health, Info,
                      LabelScore, ModalityInfo, Prediction, PredictRequest, PredictResponse, RowIn)
from .security import token_matches

log = logging.getLogger("mmfuse.serve")


async def require_token(request: Request) -> None:  # async: a sync dependency costs a thread hop
    token = request.app.state.settings.token
    if token is not None and not token_matches(request.headers.get("authorization"), token):
        missing = not request.headers.get("authorization")
        raise ApiError(401, "unauthorized", "missing bearer token" if missing else "wrong bearer token",
                       field="Authorization", headers={"WWW-Authenticate": "Bearer"})


REFUSALS = {
    400: "Malformed multipart body.",
    401: "Missing or wrong bearer token.",
    408: "The body did not arrive within the server's body timeout (the connection is closed).",
    413: "The body is over the server's cap, or the request's images would decode to more than max_request_pixels.",
    415: "A file in a format outside the allowlist (or not a file of that kind at all).",
    422: "A value the server refuses (the field is named): malformed or schema-violating JSON, blank or overlong "
         "text, bad base64, a truncated, corrupt or too large file, a row without any input, too many rows "
         "(or more than max_explain_rows with explain=true).",
    501: "This model does not expose its fused representation.",
    503: "The model is still loading or failed to load, the queue is full, or the server is shutting down "
         "(see Retry-After).",
    504: "No answer within the request timeout.",
}


def refusals(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI `responses` for the refusals a route makes, each with the JSON error body."""
    return {status: {"model": ErrorBody, "description": REFUSALS[status]} for status in statuses}


MODEL_REFUSALS = (401, 408, 413, 415, 422, 503, 504)

health = APIRouter(tags=["health"])
# Every server's /metrics (a classification or a caption model's); `api`: a classification model's.
monitoring = APIRouter(dependencies=[Depends(require_token)], route_class=StrictRoute)
api = APIRouter(dependencies=[Depends(require_token)], route_class=StrictRoute)


@health.get("/health/live", response_model=Health, responses={503: {"model": Health}})
def live(request: Request):
    """The process answers (the model may still be loading); 503 once the model failed to load, so
    a supervisor restarts it (`mmfuse serve` itself exits non-zero then)."""
    state = request.app.state.model
    if state.status == "failed":
        return JSONResponse(Health(status="failed", detail=state.error).model_dump(), status_code=503)
    return Health(status="live")


@health.get("/health/ready", response_model=Health, responses={503: {"model": Health}})
def ready(request: Request):
    """200 once the model is loaded; 503 while it loads or if loading failed."""
    state = request.app.state.model
    if state.status == "ready":
        return Health(status="ready")
    return JSONResponse(Health(status=state.status, detail=state.error).model_dump(), status_code=503,
                        headers={"Retry-After": "1"})


@monitoring.get("/metrics", tags=["health"], response_class=Response, responses={
    200: {"description": "Prometheus text format.", "content": {"text/plain": {"schema": {"type": "string"}}}},
    **refusals(401)})
def metrics(request: Request) -> Response:
    """Prometheus metrics: requests, latency, batch sizes, errors by kind, queue depth."""
    registry = request.app.state.metrics
    return Response(registry.render(), media_type=registry.content_type)


def runner_of(request: Request) -> ModelRunner:
    state = request.app.state.model
    if state.status == "loading":
        raise unavailable("not_ready", "the model is still loading", retry_after_s=2)
    if state.status == "failed":
        raise ApiError(503, "not_ready", f"the model failed to load: {state.error}")
    return state.runner


@api.get("/info", response_model=Info, responses=refusals(401, 503))
def info(request: Request) -> Info:
    """What the model expects and answers, how to send each input, and the server's input limits."""
    settings, runner = request.app.state.settings, runner_of(request)
    limits = settings.limits()
    inputs = {name: modality_info(name, limits) for name in runner.modalities}
    return Info(task=runner.task.name, labels=runner.labels, modalities=runner.modalities, inputs=inputs,
                search=request.app.state.search is not None, auth=settings.token is not None,
                max_rows=settings.max_rows, explain=runner.explains, max_explain_rows=settings.max_explain_rows,
                max_body_bytes=settings.max_body_bytes,
                max_request_pixels=settings.max_request_pixels, limits=limits)


def modality_info(name: str, limits: dict) -> ModalityInfo:
    """How to send one input: its kind, formats and this server's caps on it."""
    modality = MODALITIES[name]
    return ModalityInfo(kind="file" if modality.is_file else "text", help=modality.help,
                        formats=list(modality.formats),
                        limits={k: v for k, v in limits.items() if k in modality.limits})


# ----- turning requests into model rows -----------------------------------------------------

def _none_of(modalities: list[str]) -> str:
    if len(modalities) == 1:
        return f"the row has no {modalities[0]}"
    if len(modalities) == 2:
        return f"the row has neither {modalities[0]} nor {modalities[1]}"
    return "the row has none of " + ", ".join(modalities)


def _row(request: Request, runner: ModelRunner, values: dict[str, bytes | str | None], where: str) -> ModelRow:
    """Raw values of one row (bytes for file modalities, strings otherwise) -> a ModelRow."""
    given = {name: value for name, value in values.items() if value is not None}
    for name in given:
        if name not in runner.modalities:
            raise invalid(f"{where}{name}", f"this model takes no {name} (it takes {' + '.join(runner.modalities)})")
    if not given:
        raise invalid(f"{where}{runner.modalities[0]}", _none_of(runner.modalities))
    return make_row(given, where=where, limits=_limits(request, runner), folder=request.app.state.tmp)


def _limits(request: Request, runner: ModelRunner) -> dict:
    """The server's caps, and what the model's encoders look at (uploads decode no larger)."""
    cached = getattr(request.app.state, "input_limits", None)
    if cached is None or cached[0] is not runner:  # once per model (the settings do not change)
        settings = request.app.state.settings
        mask = settings.mask_pii or runner.masks_pii
        masker = masker_for(runner.config.privacy) if mask else None  # once per model, not per row
        cached = request.app.state.input_limits = (runner, {**settings.limits(), **runner.encoder_options,
                                                            "mask_pii": mask, "masker": masker})
    return cached[1]


# A request whose files are this small in all, in bytes and in decoded pixels (read from their
# headers first), is decoded on the event loop (well under a millisecond for easy-VQA's 64x64
# PNGs): handing it to a worker thread and back costs more than the decoding. Anything bigger, or
# a file modality whose decoding cost its header does not tell (audio), goes to a worker thread.
INLINE_BYTES = 64 * 1024
INLINE_PIXELS = 512 * 512


class _Heavy(Exception):
    """Too much to decode on the event loop: decode in a worker thread instead."""


def _rows(request: Request, runner: ModelRunner, rows: list[tuple[str, dict]], deadline: float,
          inline: bool = False) -> list[ModelRow]:
    """(field prefix, raw values) per row -> ModelRows, decoded one after the other in this worker
    thread (`inline`: on the event loop, or `_Heavy`), after the request-wide pixel cap (read from
    the headers) has passed."""
    limits = _limits(request, runner)
    pixels = check_request_pixels(rows, limits, request.app.state.settings.max_request_pixels)
    if inline and (pixels > INLINE_PIXELS or any(
            isinstance(value, bytes) and getattr(MODALITIES[name], "decoded_pixels", None) is None
            for _, values in rows for name, value in values.items())):
        raise _Heavy
    out: list[ModelRow] = []
    try:
        for where, values in rows:
            if time.monotonic() > deadline:
                raise _timed_out(request)  # already answered 504: stop decoding for nobody
            out.append(_row(request, runner, values, where))
    except ApiError:
        discard(out)
        raise
    return out


def _json_rows(request: Request, runner: ModelRunner, rows: list[RowIn], deadline: float,
               inline: bool = False) -> list[ModelRow]:
    limit = request.app.state.settings.max_rows
    if len(rows) > limit:
        raise invalid("rows", f"{len(rows)} rows in one request (max {limit})")
    raw = []
    for i, row in enumerate(rows):
        where = f"rows[{i}]."
        values: dict[str, bytes | str | None] = {}
        for name, modality in MODALITIES.items():
            value = getattr(row, name)
            if value is not None and modality.is_file and name in runner.modalities:
                value = decode_base64(value, f"{where}{name}", name)
            values[name] = value
        raw.append((where, values))
    return _rows(request, runner, raw, deadline, inline)


def deadline_of(request: Request) -> float:
    return time.monotonic() + request.app.state.settings.timeout_s


def _timed_out(request: Request) -> ApiError:
    return ApiError(504, "timeout", f"no answer within {request.app.state.settings.timeout_s:g} s")


async def _decoded(request: Request, deadline: float, size: int, build, *args) -> list[ModelRow]:
    """`build(*args)`, which decodes rows in a worker thread, awaited until the deadline only; on
    the event loop if the request's `size` bytes of files are few enough (`INLINE_BYTES`)."""
    if size <= INLINE_BYTES:
        try:
            return build(*args, inline=True)
        except _Heavy:
            pass
    task = asyncio.ensure_future(run_in_threadpool(build, *args))
    try:
        return await asyncio.wait_for(asyncio.shield(task), max(0.0, deadline - time.monotonic()))
    except asyncio.TimeoutError:
        task.add_done_callback(_discard_late)
        raise _timed_out(request) from None
    except asyncio.CancelledError:  # the client went away
        task.add_done_callback(_discard_late)
        raise


def _discard_late(task: asyncio.Future) -> None:
    """Delete the temp files of rows decoded for a request that is already answered."""
    if not task.cancelled() and task.exception() is None:
        discard(task.result())


def _file_bytes(rows: list[RowIn]) -> int:
    """About how many bytes of files the JSON rows carry (base64 is 4/3 of them)."""
    return sum(3 * len(getattr(row, name)) // 4 for row in rows for name, modality in MODALITIES.items()
               if modality.is_file and getattr(row, name) is not None)


async def run_rows(request: Request, rows: list[ModelRow], deadline: float) -> list:
    """The model's results for `rows` (through the batcher), or the 503 / 504 answer."""
    try:
        # A future, not a coroutine: wait_for then needs no task of its own.
        job = request.app.state.batcher.submit_nowait(rows)
        return await asyncio.wait_for(job, max(0.0, deadline - time.monotonic()))
    except Overloaded as error:
        raise unavailable("overloaded", f"server busy: {error}; retry shortly") from None
    except Closed as error:
        raise unavailable("shutting_down", f"{error}; retry shortly") from None
    except asyncio.TimeoutError:
        raise _timed_out(request) from None


# ----- predictions ----------------------------------------------------------------------------

def _explained(rows: list[ModelRow], explain: bool) -> tuple[list[ModelRow], list[list[tuple[str | None, int]]]]:
    """Rows to run, and per request row [(None, its position), (modality, position of the row
    without that modality), ...]. Only rows with two inputs or more are explained."""
    todo: list[ModelRow] = []
    plan: list[list[tuple[str | None, int]]] = []
    for row in rows:
        present = list(row.values) if explain and len(row.values) > 1 else []
        runs = [(None, row), *((name, row.without(name)) for name in present)]
        plan.append([(name, len(todo) + i) for i, (name, _) in enumerate(runs)])
        todo += [run for _, run in runs]
    return todo, plan


def _prediction(runner: ModelRunner, result: RowResult, top_k: int) -> Prediction:
    [(prediction, top)] = runner.task.answers(result.scores[None], runner.labels, top_k)
    return Prediction(prediction=prediction, top=[LabelScore(label=label, score=score) for label, score in top])


def _contribution(runner: ModelRunner, full: RowResult, without: dict[str, RowResult]) -> Contribution | None:
    if not runner.task.per_label or any(result.scores is None for result in without.values()):
        return None
    best = int(full.scores.argmax())
    return Contribution(label=runner.labels[best], score=float(full.scores[best]),
                        without={name: float(result.scores[best]) for name, result in without.items()})


def answer(body: BaseModel) -> Response:
    """A validated response body as JSON, serialised by pydantic: returned as a Response, FastAPI
    does not validate and serialise it a second time (`response_model` still documents it)."""
    return Response(body.model_dump_json(), media_type="application/json")


def _log_text(row: ModelRow) -> str | None:
    """What of a row the log may show: its text (strings only; never file contents)."""
    return next((value for name, value in row.values.items() if not MODALITIES[name].is_file), None)


async def _predict(request: Request, runner: ModelRunner, rows: list[ModelRow], top_k: int,
                   explain: bool, deadline: float) -> Response:
    started = time.perf_counter()
    if explain:  # each row is also explained, in the model thread (serve/explanations.py)
        for row in rows:
            row.explain_until = deadline
    todo, plan = _explained(rows, explain)
    try:
        results = await run_rows(request, todo, deadline)
    finally:
        discard(rows)  # the rows without a modality share these files
    predictions = []
    for i, runs in enumerate(plan):
        result = results[runs[0][1]]
        if result.scores is None:
            raise refused(f"rows[{i}]", result)
        prediction = _prediction(runner, result, top_k)
        if len(runs) > 1:
            prediction.contribution = _contribution(runner, result, {name: results[p] for name, p in runs[1:]})
        prediction.explanation = result.explanation
        predictions.append(prediction)
    mask = request.app.state.settings.mask_pii
    if log.isEnabledFor(logging.DEBUG):  # per request: the access log has every request at INFO
        log.debug("predict rows=%d inputs=%s text=%s -> %s (%.1f ms)", len(rows), "+".join(rows[0].values),
                  log_preview(_log_text(rows[0]), mask=mask), predictions[0].prediction,
                  1000 * (time.perf_counter() - started))
    return answer(PredictResponse(predictions=predictions))


@api.post("/predict", response_model=PredictResponse, tags=["model"], responses=refusals(*MODEL_REFUSALS))
async def predict(request: Request, body: PredictRequest) -> Response:
    """Predict one row or a batch (JSON; files base64). Any input may be left out."""
    return await predict_json(request, body)


async def predict_json(request: Request, body: PredictRequest) -> Response:
    """POST /predict once the body is validated (also the end of the fast lane, serve/fastlane.py)."""
    runner, deadline = runner_of(request), deadline_of(request)
    if body.explain:  # before decoding anything (an upload is one row: always within the cap)
        check_explain_rows(len(body.rows), request.app.state.settings.max_explain_rows)
    rows = await _decoded(request, deadline, _file_bytes(body.rows), _json_rows, request, runner, body.rows, deadline)
    return await _predict(request, runner, rows, body.top_k, body.explain, deadline)


async def predict_upload(request: Request, top_k: int = 3, explain: bool = False, **parts) -> Response:
    """Predict one row from a multipart form: a file part per file input (image, audio, ...) and a
    form field per text input, each optional."""
    runner, deadline = runner_of(request), deadline_of(request)
    values: dict[str, bytes | str | None] = {}
    for name, modality in MODALITIES.items():
        part = parts.get(name)
        if modality.is_file and part is not None:
            # An empty file input of a browser form (no name, no bytes) means "no file".
            part = await part.read() if (part.filename or part.size) else None
        values[name] = part
    rows = await upload_rows(request, runner, values, deadline)
    return await _predict(request, runner, rows, top_k, explain, deadline)


async def upload_rows(request: Request, runner, values: dict[str, bytes | str | None],
                      deadline: float) -> list[ModelRow]:
    """One row of uploaded parts (bytes for files, strings otherwise) -> [its ModelRow], vetted
    within the request's caps and deadline. `runner`: a ModelRunner, or the CaptionRunner of
    /caption (serve/captions.py), which has the same `modalities`, `config`, `encoder_options`."""
    size = sum(len(value) for value in values.values() if isinstance(value, bytes))
    return await _decoded(request, deadline, size, _rows, request, runner, [("", values)], deadline)


def _upload_part(name: str, modality: Modality) -> inspect.Parameter:
    # Not Optional: a multipart part is a file or a string, never null; leaving it out is the
    # absence (the default), so the schema types an image part as a file and a string there is a 422.
    if modality.is_file:
        annotation = Annotated[UploadFile, File(description=f"{modality.help} The file.")]
    else:
        annotation = Annotated[str, Form(description=f"{modality.help} Empty: no {name}.")]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


# FastAPI reads an endpoint's parameters from its signature: one optional part per registered
# modality, so a new modality is a new form part without a change here.
predict_upload.__signature__ = inspect.Signature([
    inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request),
    *(_upload_part(name, modality) for name, modality in MODALITIES.items()),
    inspect.Parameter("top_k", inspect.Parameter.KEYWORD_ONLY, default=3,
                      annotation=Annotated[int, Form(ge=1, le=MAX_TOP_K)]),
    inspect.Parameter("explain", inspect.Parameter.KEYWORD_ONLY, default=False,
                      annotation=Annotated[bool, Form(description="Also score the row without each of its inputs, "
                                                                  "and explain it (`explanation`).")]),
], return_annotation=Response)
api.post("/predict/upload", response_model=PredictResponse, tags=["model"],
         responses=refusals(400, *MODEL_REFUSALS))(predict_upload)


@api.post("/embed", response_model=EmbedResponse, tags=["model"], responses=refusals(*MODEL_REFUSALS, 501))
async def embed(request: Request, body: EmbedRequest) -> Response:
    """The fused representation (the task head's input) of each row."""
    runner, deadline = runner_of(request), deadline_of(request)
    rows = await _decoded(request, deadline, _file_bytes(body.rows), _json_rows, request, runner, body.rows, deadline)
    try:
        results = await run_rows(request, rows, deadline)
    finally:
        discard(rows)
    vectors = []
    for i, result in enumerate(results):
        if result.scores is None:
            raise refused(f"rows[{i}]", result)
        if result.fused is None:
            raise ApiError(501, "not_available", "this model does not expose its fused representation")
        vectors.append(result.fused.tolist())
    return answer(EmbedResponse(dim=len(vectors[0]), embeddings=vectors))
