"""Request and response bodies (pydantic): they are also the OpenAPI schema at /docs."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

MAX_TOP_K = 50


class _Strict(BaseModel):
    # Strict: `"text": 5` or `"top_k": "3"` is a 422 naming the field, never silently coerced;
    # unknown fields are refused so a misspelt field name is not silently ignored.
    model_config = ConfigDict(strict=True, extra="forbid")


class RowIn(_Strict):
    image: str | None = Field(None, description="The image bytes, base64 (or a data: URL). Absent: no image.")
    text: str | None = Field(None, description="The text / question. Absent: no text.")


class PredictRequest(_Strict):
    rows: list[RowIn] = Field(..., min_length=1, description="One row or a batch.")
    top_k: int = Field(3, ge=1, le=MAX_TOP_K)
    explain: bool = Field(False, description="Also score each row without its image and without its text.")


class EmbedRequest(_Strict):
    rows: list[RowIn] = Field(..., min_length=1)


class SearchRequest(_Strict):
    text: str | None = Field(None, description="Search by text...")
    image: str | None = Field(None, description="...or by an image (base64).")
    k: int = Field(8, ge=1, le=100)


class LabelScore(BaseModel):
    label: str
    score: float


class Contribution(BaseModel):
    """The top answer's score with both modalities, and with each one removed."""

    label: str
    both: float
    without_image: float
    without_text: float


class Prediction(BaseModel):
    prediction: str | float
    top: list[LabelScore]
    contribution: Contribution | None = None


class PredictResponse(BaseModel):
    predictions: list[Prediction]


class EmbedResponse(BaseModel):
    dim: int
    embeddings: list[list[float]]


class Hit(BaseModel):
    id: int
    score: float
    metadata: dict
    image_url: str | None = None


class SearchResponse(BaseModel):
    hits: list[Hit]


class Info(BaseModel):
    task: str
    labels: list[str]
    modalities: list[str]
    search: bool
    auth: bool
    max_rows: int
    max_body_bytes: int
    max_text_chars: int
    accepted_image_formats: list[str]


class Health(BaseModel):
    status: str
    detail: str | None = None
