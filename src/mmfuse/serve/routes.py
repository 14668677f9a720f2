"""The HTTP endpoints: health, info, metrics, predict (JSON and multipart), embed."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from .batcher import Overloaded
from .errors import ApiError, invalid, unavailable
from .inputs import ALLOWED_FORMATS, ModelRow, check_text, decode_base64, discard, save_image
from .privacy import log_preview
from .runner import ModelRunner, RowResult, refused
from .schemas import (MAX_TOP_K, Contribution, EmbedRequest, EmbedResponse, Health, Info, LabelScore,
                      Prediction, PredictRequest, PredictResponse, RowIn)
from .security import token_matches

log = logging.getLogger("mmfuse.serve")


def require_token(request: Request) -> None:
    token = request.app.state.settings.token
    if token is not None and not token_matches(request.headers.get("authorization"), token):
        missing = not request.headers.get("authorization")
        raise ApiError(401, "unauthorized", "missing bearer token" if missing else "wrong bearer token",
                       field="Authorization", headers={"WWW-Authenticate": "Bearer"})


health = APIRouter(tags=["health"])
api = APIRouter(dependencies=[Depends(require_token)])


@health.get("/health/live", response_model=Health)
def live() -> Health:
    """The process answers (the model may still be loading)."""
    return Health(status="live")


@health.get("/health/ready", response_model=Health, responses={503: {"model": Health}})
def ready(request: Request):
    """200 once the model is loaded; 503 while it loads or if loading failed."""
    state = request.app.state.model
    if state.status == "ready":
        return Health(status="ready")
    return JSONResponse(Health(status=state.status, detail=state.error).model_dump(), status_code=503,
                        headers={"Retry-After": "1"})


@api.get("/metrics", tags=["health"], response_class=Response)
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


@api.get("/info", response_model=Info)
def info(request: Request) -> Info:
    """What the model expects and answers, and the server's input limits."""
    settings, runner = request.app.state.settings, runner_of(request)
    return Info(task=runner.task, labels=runner.labels, modalities=runner.modalities,
                search=request.app.state.search is not None, auth=settings.token is not None,
                max_rows=settings.max_rows, max_body_bytes=settings.max_body_bytes,
                max_text_chars=settings.max_text_chars, accepted_image_formats=list(ALLOWED_FORMATS))


# ----- turning requests into model rows -----------------------------------------------------

def _row(request: Request, runner: ModelRunner, image: bytes | None, text: str | None, where: str) -> ModelRow:
    settings = request.app.state.settings
    if image is not None and "image" not in runner.modalities:
        raise invalid(f"{where}image", "this model takes no image")
    if text is not None and "text" not in runner.modalities:
        raise invalid(f"{where}text", "this model takes no text")
    if image is None and text is None:
        raise invalid(f"{where}image", "the row has neither an image nor a text")
    clean = check_text(text, f"{where}text", max_chars=settings.max_text_chars)
    decoded = None
    if image is not None:
        decoded = save_image(image, f"{where}image", max_pixels=settings.max_pixels, folder=request.app.state.tmp)
    return ModelRow(image=decoded, text=clean)


def _json_rows(request: Request, runner: ModelRunner, rows: list[RowIn]) -> list[ModelRow]:
    limit = request.app.state.settings.max_rows
    if len(rows) > limit:
        raise invalid("rows", f"{len(rows)} rows in one request (max {limit})")
    out: list[ModelRow] = []
    try:
        for i, row in enumerate(rows):
            where = f"rows[{i}]."
            image = decode_base64(row.image, f"{where}image") if row.image is not None else None
            out.append(_row(request, runner, image, row.text, where))
    except ApiError:
        discard(out)
        raise
    return out


async def _run(request: Request, rows: list[ModelRow]) -> list[RowResult]:
    settings = request.app.state.settings
    try:
        return await asyncio.wait_for(request.app.state.batcher.submit(rows), settings.timeout_s)
    except Overloaded as error:
        raise unavailable("overloaded", f"server busy: {error}; retry shortly") from None
    except TimeoutError:
        raise ApiError(504, "timeout", f"no answer within {settings.timeout_s:g} s") from None


# ----- predictions ----------------------------------------------------------------------------

def _explained(rows: list[ModelRow], explain: bool) -> tuple[list[ModelRow], list[list[int]]]:
    """Rows to run, and per request row the positions of [itself, without image, without text].

    Only rows with both modalities are explained; the others are run once.
    """
    todo: list[ModelRow] = []
    plan: list[list[int]] = []
    for row in rows:
        both = row.image is not None and row.text is not None
        extra = [ModelRow(image=None, text=row.text), ModelRow(image=row.image, text=None)] if explain and both else []
        plan.append(list(range(len(todo), len(todo) + 1 + len(extra))))
        todo += [row, *extra]
    return todo, plan


def _prediction(runner: ModelRunner, result: RowResult, top_k: int) -> Prediction:
    scores = result.scores
    if runner.task == "regression":
        return Prediction(prediction=float(scores[0]), top=[])
    top = scores.topk(min(top_k, scores.numel()))
    labels = runner.labels
    if runner.task == "multilabel":
        prediction = "|".join(labels[i] for i in (scores > 0.5).nonzero().flatten().tolist())
    else:
        prediction = labels[int(scores.argmax())]
    return Prediction(prediction=prediction, top=[LabelScore(label=labels[i], score=float(s))
                                                  for s, i in zip(top.values.tolist(), top.indices.tolist())])


def _contribution(runner: ModelRunner, both: RowResult, no_image: RowResult, no_text: RowResult):
    if runner.task == "regression" or None in (no_image.scores, no_text.scores):
        return None
    best = int(both.scores.argmax())
    return Contribution(label=runner.labels[best], both=float(both.scores[best]),
                        without_image=float(no_image.scores[best]), without_text=float(no_text.scores[best]))


async def _predict(request: Request, runner: ModelRunner, rows: list[ModelRow], top_k: int,
                   explain: bool) -> PredictResponse:
    started = time.perf_counter()
    todo, plan = _explained(rows, explain)
    try:
        results = await _run(request, todo)
    finally:
        discard(rows)
    predictions = []
    for i, positions in enumerate(plan):
        result = results[positions[0]]
        if result.scores is None:
            raise refused(f"rows[{i}]", result)
        prediction = _prediction(runner, result, top_k)
        if len(positions) == 3:
            prediction.contribution = _contribution(runner, *(results[p] for p in positions))
        predictions.append(prediction)
    mask = request.app.state.settings.mask_pii
    log.info("predict rows=%d text=%s -> %s (%.1f ms)", len(rows), log_preview(rows[0].text, mask=mask),
             predictions[0].prediction, 1000 * (time.perf_counter() - started))
    return PredictResponse(predictions=predictions)


@api.post("/predict", response_model=PredictResponse, tags=["model"])
async def predict(request: Request, body: PredictRequest) -> PredictResponse:
    """Predict one row or a batch (JSON; images base64). Either modality may be left out."""
    runner = runner_of(request)
    rows = await run_in_threadpool(_json_rows, request, runner, body.rows)
    return await _predict(request, runner, rows, body.top_k, body.explain)


@api.post("/predict/upload", response_model=PredictResponse, tags=["model"])
async def predict_upload(
    request: Request,
    image: Annotated[UploadFile | None, File(description="The image file (PNG, JPEG, WebP, GIF, BMP).")] = None,
    text: Annotated[str | None, Form(description="The text / question.")] = None,
    top_k: Annotated[int, Form(ge=1, le=MAX_TOP_K)] = 3,
    explain: Annotated[bool, Form(description="Also score the row without each modality.")] = False,
) -> PredictResponse:
    """Predict one row from a multipart form (an image file and/or a text field)."""
    runner = runner_of(request)
    data = None
    if image is not None and (image.filename or image.size):  # an empty file input means no image
        data = await image.read()
    row = await run_in_threadpool(_row, request, runner, data, text, "")
    return await _predict(request, runner, [row], top_k, explain)


@api.post("/embed", response_model=EmbedResponse, tags=["model"])
async def embed(request: Request, body: EmbedRequest) -> EmbedResponse:
    """The fused representation (the task head's input) of each row."""
    runner = runner_of(request)
    rows = await run_in_threadpool(_json_rows, request, runner, body.rows)
    try:
        results = await _run(request, rows)
    finally:
        discard(rows)
    vectors = []
    for i, result in enumerate(results):
        if result.scores is None:
            raise refused(f"rows[{i}]", result)
        if result.fused is None:
            raise ApiError(501, "not_available", "this model does not expose its fused representation")
        vectors.append(result.fused.tolist())
    return EmbedResponse(dim=len(vectors[0]), embeddings=vectors)
