"""Request and response bodies (pydantic): they are also the OpenAPI schema at /docs.

A row has one optional field per registered modality (mmfuse.modalities.MODALITIES), so a new
modality is accepted by the server without a change here.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model

from ..modalities import MODALITIES, Modality

MAX_TOP_K = 50


class _Strict(BaseModel):
    # Strict: `"text": 5` or `"top_k": "3"` is a 422 naming the field, never silently coerced;
    # unknown fields are refused so a misspelt field name is not silently ignored.
    model_config = ConfigDict(strict=True, extra="forbid")


def _integral(value: Any) -> Any:
    """JSON has one number type: `5.0` is the integer 5 (JSON Schema says so too); `5.5`, `"5"` and
    `true` still fail strict validation."""
    return int(value) if type(value) is float and value.is_integer() else value


JsonInt = Annotated[int, BeforeValidator(_integral)]


def describe(modality: Modality) -> str:
    """The field's description: the modality's help, and how the value travels."""
    if modality.is_file:
        return (f"{modality.help} The file's bytes, base64 (or a data: URL). "
                f"Absent: predict without {modality.name}.")
    return f"{modality.help} Absent: predict without {modality.name}."


# {"image": "<base64>", "text": "...", "audio": "<base64>"}: every field optional.
RowIn = create_model(
    "RowIn", __base__=_Strict, __doc__="One row: any of the model's inputs (at least one).",
    **{name: (str | None, Field(None, description=describe(modality))) for name, modality in MODALITIES.items()})


class PredictRequest(_Strict):
    rows: list[RowIn] = Field(..., min_length=1, description="One row or a batch.")
    top_k: JsonInt = Field(3, ge=1, le=MAX_TOP_K)
    explain: bool = Field(False, description="Also score each row (with two inputs or more) without each of its inputs, "
                                             "and explain each row (`explanation`; at most the server's max_explain_rows rows).")


class EmbedRequest(_Strict):
    rows: list[RowIn] = Field(..., min_length=1)


class SearchRequest(_Strict):
    text: str | None = Field(None, description="Search by text...")
    image: str | None = Field(None, description="...or by an image (base64).")
    k: JsonInt = Field(8, ge=1, le=100)


class LabelScore(BaseModel):
    label: str
    score: float


class Contribution(BaseModel):
    """The top answer's score with every input the row has, and with each one removed."""

    label: str
    score: float = Field(description="The label's score with all of the row's inputs.")
    without: dict[str, float] = Field(description="Modality -> the label's score without that input.")


class WordAttribution(BaseModel):
    model_config = ConfigDict(extra="allow")  # a method may say more of a word (kept as it says it)

    word: str
    attribution: float = Field(description="The word's effect on the answer's log-odds, by the method in "
                                           "word_method: > 0 for, < 0 against.")


class WordEdit(BaseModel):
    word: str
    edit: str = Field(description="The text with this word deleted or replaced: its edit that lowers the answer most.")
    answer: str = Field(description="The model's answer to the edited text.")


class Explanation(BaseModel):
    """Why the model gave its top answer (mmfuse.explain.explain_row)."""

    label: str = Field(description="The answer explained (the top one).")
    probability: float
    heatmaps: dict[str, list[list[float]]] = Field(
        description="Spatial modality (image) -> a square grid over it, row by row from the top, in [0, 1] "
                    "(1: the region that counted most).")
    words: dict[str, list[WordAttribution]] = Field(
        description="Worded modality (text) -> its words in order (as the model read them: masked with mask_pii).")
    word_method: dict[str, str] = Field(
        default_factory=dict, description="Worded modality -> how its words were attributed: counterfactual "
                                          "(each word's most decisive edit), integrated-gradients or occlusion.")
    edits: dict[str, list[WordEdit]] = Field(
        default_factory=dict, description="Worded modality -> per word, in order, its most decisive edit "
                                          "(counterfactual only).")
    shapley: dict[str, float] = Field(description="Modality -> its Shapley value for the answer's probability.")


class Prediction(BaseModel):
    prediction: str | float
    top: list[LabelScore]
    contribution: Contribution | None = None
    explanation: Explanation | None = Field(None, description="With explain=true, for a classification model; "
                                                              "else null.")


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


class ModalityInfo(BaseModel):
    """How to send one of the model's inputs."""

    kind: Literal["file", "text"] = Field(description="file: bytes (base64 in JSON, a file part in multipart); "
                                                      "text: a string")
    help: str
    formats: list[str] = Field(description="Accepted file formats (empty for text).")
    limits: dict[str, int | float] = Field(description="This server's caps on the input.")


class Info(BaseModel):
    task: str
    labels: list[str]
    modalities: list[str]
    inputs: dict[str, ModalityInfo] = Field(description="Per modality the model takes: how to send it.")
    search: bool
    auth: bool
    max_rows: int
    explain: bool = Field(description="Whether explain=true explains rows (classification models only).")
    max_explain_rows: int = Field(description="Rows one request with explain=true may have.")
    max_body_bytes: int
    max_request_pixels: int = Field(description="Decoded image pixels in one request, all rows together.")
    limits: dict[str, int | float] = Field(description="Every input cap of this server.")


class CaptionInfo(BaseModel):
    """A caption model's server: what to send to /caption and how the caption is searched."""

    task: Literal["caption"]
    modalities: list[str] = Field(description="The model's inputs: one image.")
    inputs: dict[str, ModalityInfo] = Field(description="How to send the image.")
    beam_size: int = Field(description="Beam width of the caption search (1: greedy), the model's caption.beam_size.")
    max_length: int = Field(description="Most tokens in a caption.")
    search: bool
    auth: bool
    max_body_bytes: int
    limits: dict[str, int | float] = Field(description="Every input cap of this server.")


class CaptionResponse(BaseModel):
    caption: str = Field(description="The model's caption of the image.")
    beam_size: int = Field(description="The beam width it was searched with (1: greedy).")
    seconds: float = Field(description="The server's time on the request once its body was in: decoding the "
                                       "image, waiting for the model and captioning.")


class ErrorDetail(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    """Every refusal: a short stable kind, the request part at fault, and what is wrong with it."""

    error: str = Field(description="A short stable word: invalid_input, too_large, unsupported_media_type, "
                                   "unauthorized, timeout, overloaded, not_ready, ...")
    field: str | None = Field(description="The request part at fault (`rows[0].image`, `body`, `Authorization`), "
                                          "or null when no field is to blame.")
    message: str
    details: list[ErrorDetail] | None = Field(None, description="Every problem found (schema violations only).")


class Health(BaseModel):
    status: str
    detail: str | None = None
