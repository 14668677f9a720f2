"""A caption model's server (`mmfuse serve` on a `task: caption` model): POST /caption and its /info.

Everything else is the classification server's (serve/app.py): body cap and deadline, token,
health, metrics, micro-batching, OpenAPI and the web page. The image is vetted exactly as a
/predict/upload image is (serve/inputs.py: format allowlist, pixel caps read from the header, full
decode), and concurrent requests share one batched search, which captions each image as it would
alone (tests/test_captioning.py). Loading imports no Lightning: a captioner is torch modules and
a safetensors file (captioning/artifact.py).
"""
from __future__ import annotations

import time
from typing import Annotated, Any, Callable

from fastapi import APIRouter, Depends, File, Request, UploadFile
from fastapi.responses import Response

from ..captioning.model import Captioner, caption_images, pixels_of
from ..config import Config
from ..modalities import MODALITIES
from .bodies import StrictRoute
from .inputs import ModelRow, discard
from .model_state import ModelState
from .routes import (MODEL_REFUSALS, answer, deadline_of, modality_info, refusals, require_token, run_rows,
                     runner_of, upload_rows)
from .schemas import CaptionInfo, CaptionResponse
from .settings import ServeSettings


class CaptionRunner:
    """The captioner as the batcher calls it, in the model thread only: rows with a vetted image
    -> one caption each, with the model's own beam size and length penalty (as `mmfuse caption`)."""

    modalities = ["image"]
    masks_pii = False  # no text goes in

    def __init__(self, loaded: tuple[Captioner, Config]):
        self.model, self.config = loaded
        self.model.eval()  # a served model never trains: once, not per batch
        self.beam_size = self.model.settings.beam_size
        self.max_length = self.model.settings.max_length
        # Uploads decode no larger than the encoder looks at, as a classification model's do.
        self.encoder_options = MODALITIES["image"].encoder_options(self.config.encoders.image)
        self.summary = f"caption, beam size {self.beam_size}"

    def __call__(self, rows: list[ModelRow]) -> list[str]:
        pictures = [row.get("image").value for row in rows]  # decoded once, when the upload was vetted
        return caption_images(self.model, pixels_of(self.model, pictures))


def caption_state(settings: ServeSettings, load: Callable[[], Any] | None = None) -> ModelState:
    """The model's life on a caption server: `load` (default: the model directory) returns
    (captioner, config), as `load_captioner` does."""

    def load_model() -> tuple[Captioner, Config]:
        from ..captioning.artifact import load_captioner

        return load_captioner(settings.model_dir)

    return ModelState(load or load_model, wrap=CaptionRunner)


caption_routes = APIRouter(dependencies=[Depends(require_token)], route_class=StrictRoute)


@caption_routes.get("/info", response_model=CaptionInfo, responses=refusals(401, 503))
def info(request: Request) -> CaptionInfo:
    """What to send to /caption, how captions are searched, and the server's input limits."""
    settings, runner = request.app.state.settings, runner_of(request)
    limits = settings.limits()
    return CaptionInfo(task="caption", modalities=runner.modalities,
                       inputs={name: modality_info(name, limits) for name in runner.modalities},
                       beam_size=runner.beam_size, max_length=runner.max_length,
                       search=request.app.state.search is not None, auth=settings.token is not None,
                       max_body_bytes=settings.max_body_bytes, limits=limits)


ImagePart = Annotated[UploadFile, File(description=MODALITIES["image"].help)]  # required: no image, no caption


@caption_routes.post("/caption", response_model=CaptionResponse, tags=["model"],
                     responses=refusals(400, *MODEL_REFUSALS))
async def caption(request: Request, image: ImagePart) -> Response:
    """Caption one image, sent as the multipart file part `image` (as to /predict/upload)."""
    started = time.perf_counter()  # the body is in: FastAPI has parsed the form
    runner, deadline = runner_of(request), deadline_of(request)
    rows = await upload_rows(request, runner, {"image": await image.read()}, deadline)
    try:
        [text] = await run_rows(request, rows, deadline)
    finally:
        discard(rows)
    return answer(CaptionResponse(caption=text, beam_size=runner.beam_size,
                                  seconds=round(time.perf_counter() - started, 4)))
