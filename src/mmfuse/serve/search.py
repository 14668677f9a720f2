"""/search: query an index (mmfuse index) by text or image through its aligned model (image-text only).

The index directory's index.json names the aligned model (`info.model`). Both are loaded in a
background thread at startup, like the served model. Imported only when --index is given, so a
server without an index does not need faiss or the alignment code.
"""
from __future__ import annotations

import base64
import io
import json
import math
import threading
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool

from ..data.media import MediaError, open_image
from ..errors import MmfuseError
from .errors import ApiError, invalid, unavailable
from ..modalities import MODALITIES
from .inputs import ModelRow, check_string, decode_base64, discard, save_upload
from .schemas import Hit, SearchRequest, SearchResponse

THUMBNAIL_PX = 128


class SearchIndex:
    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.status, self.error = "loading", None
        self.index = self.model = None
        self.lock = threading.Lock()  # one query embedding at a time
        threading.Thread(target=self._load, name="mmfuse-index-load", daemon=True).start()

    def _load(self) -> None:
        try:
            from ..align.model import AlignedModel
            from ..index import VectorIndex

            self.index = VectorIndex.open(self.directory)
            model_dir = self.index.info.get("model")
            if not model_dir:
                raise ValueError(f"{self.directory}/index.json names no aligned model (info.model)")
            self.model = AlignedModel.load(model_dir)
            self.status = "ready"
        except Exception as error:  # noqa: BLE001 - reported on /search
            self.status, self.error = "failed", f"{type(error).__name__}: {error}"

    def query(self, text: str | None, image_path: str | None, k: int) -> list[Hit]:
        with self.lock:
            vector = self.model.embed_texts([text]) if text is not None else self.model.embed_images([image_path])
            result = self.index.search(vector, k)
        ids = [int(i) for i in result.ids[0] if i >= 0]
        scores = [float(s) for s in result.scores[0][: len(ids)]]
        metadata = self.index.metadata_for(ids).to_dict("records") if ids else []
        return [Hit(id=i, score=s, metadata=_json_safe(m), image_url=_thumbnail(m))
                for i, s, m in zip(ids, scores, metadata)]


def _json_safe(record: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in record.items():
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            value = str(value)
        out[str(key)] = value
    return out


def _thumbnail(record: dict[str, Any]) -> str | None:
    """A small PNG data URL of the hit's image (the index's own files only, never a user path)."""
    path = record.get("image")
    if not isinstance(path, str) or not Path(path).is_file():
        return None
    try:
        image = open_image(path, max_pixels=25_000_000)
    except MediaError:
        return None
    image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    image.info.clear()  # no EXIF (GPS, camera serials) or text chunks go out with the picture
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def attach_search(app: FastAPI, directory: Path) -> None:
    from .bodies import StrictRoute
    from .routes import refusals, require_token

    app.state.search = SearchIndex(directory)
    router = APIRouter(dependencies=[Depends(require_token)], tags=["search"], route_class=StrictRoute)

    @router.post("/search", response_model=SearchResponse, responses=refusals(401, 408, 413, 415, 422, 503))
    async def search(request: Request, body: SearchRequest) -> SearchResponse:
        """Nearest items of the index to a text or an image (exactly one of them)."""
        index: SearchIndex = request.app.state.search
        if index.status == "loading":
            raise unavailable("not_ready", "the index is still loading", retry_after_s=2)
        if index.status == "failed":
            raise ApiError(503, "not_ready", f"the index failed to load: {index.error}")
        if (body.text is None) == (body.image is None):
            raise invalid("text", "give exactly one of text or image")
        settings = request.app.state.settings
        limits = settings.limits()
        text = None if body.text is None else check_string(MODALITIES["text"], body.text, "text", limits)
        row = ModelRow()
        try:
            if body.image is not None:
                data = decode_base64(body.image, "image", "image")
                row.values["image"] = await run_in_threadpool(save_upload, MODALITIES["image"], data, "image",
                                                              limits=limits, folder=request.app.state.tmp)
            image = None if row.get("image") is None else row.get("image").path
            hits = await run_in_threadpool(index.query, text, image, body.k)
        except MmfuseError as error:
            raise invalid("image" if body.image is not None else "text", str(error)) from None
        finally:
            discard([row])
        return SearchResponse(hits=hits)

    app.include_router(router)
