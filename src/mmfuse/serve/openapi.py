"""The OpenAPI document at /openapi.json: what the server really accepts and refuses.

FastAPI writes the document from the routes and the pydantic bodies, which know neither this
server's caps nor the served model. Here it is finished so that a request the schema allows is
answered, and one it forbids is refused:

- every route's refusals (401, 408, 413, 415, 422, 503, 504, ...) with the JSON error body
  (`schemas.ErrorBody`), 401 only when the server has a token, which is also declared as the
  bearer security scheme;
- text inputs: at most the server's `max_*_chars` characters, and not blank (whitespace and NUL
  only is refused, exactly as `str.strip` sees whitespace);
- file inputs in JSON: `format: <modality>-base64` (the file's bytes, base64 or a data: URL); in multipart: a
  file part (`format: binary`) with the accepted media types as the part's `encoding.contentType`
  (a string part is a 422);
- once the model is loaded: rows take only the model's modalities (`"audio": null` at most for a
  model without audio), need at least one of them, and at most `max_rows` of them per request
  (`max_explain_rows` with explain=true).

The content of a file (a real PNG within the pixel caps) is beyond JSON Schema; the format names
it, and a client generating requests from the schema (tests/schemathesis_hooks.py) produces
real files for it.
"""
from __future__ import annotations

import functools
import sys
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ..modalities import MODALITIES, Modality

# Characters `str.strip()` removes (str.isspace), and NUL, which the server removes too: a text
# of these only is empty. Written as \uXXXX escapes, which ECMA-262, Python and Rust regexes read alike.
@functools.cache
def not_blank() -> str:
    """A regex matching one character that is not blank: a text with one is not empty."""
    blank = [c for c in range(sys.maxunicode + 1) if chr(c).isspace()] + [0]
    return f"[^{_class(blank)}]"


def _class(codes: list[int]) -> str:
    ranges: list[list[int]] = []
    for code in sorted(codes):
        if ranges and code == ranges[-1][1] + 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])
    return "".join(f"\\u{a:04x}" if a == b else f"\\u{a:04x}-\\u{b:04x}" for a, b in ranges)



def media_types(modality: Modality) -> list[str]:
    """The MIME types of a file modality's accepted formats: PNG -> image/png, WAV -> audio/wav."""
    return [f"{modality.name}/{fmt.lower()}" for fmt in modality.formats]


def base64_format(modality: Modality) -> str:
    return f"{modality.name}-base64"


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        state = app.state.model
        runner = state.runner if state.status == "ready" else None
        finish(schema, app.state.settings, None if runner is None else runner.modalities)
        if runner is not None:
            app.openapi_schema = schema  # final once the model is in; rebuilt while it loads
        return schema

    app.openapi = openapi


def finish(schema: dict[str, Any], settings, modalities: list[str] | None) -> None:
    """Complete FastAPI's document in place (see the module docstring); `modalities`: the model's,
    None while it loads (then every registered one is described)."""
    limits = settings.limits()
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    taken = list(MODALITIES) if modalities is None else list(modalities)
    for operation in _operations(schema):
        responses = operation.get("responses", {})
        if settings.token is None:
            responses.pop("401", None)
        elif "401" in responses:
            operation["security"] = [{"bearer": []}]
    if settings.token is not None:
        schema["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "The server's --token."}}
    row = components.get("RowIn")
    if row is not None:
        _json_row(row, taken, limits, at_least_one=True)
    for name in ("PredictRequest", "EmbedRequest"):
        rows = components.get(name, {}).get("properties", {}).get("rows")
        if rows is not None:
            rows["maxItems"] = settings.max_rows
    predict = components.get("PredictRequest")
    if predict is not None:  # explain=true: at most max_explain_rows rows
        predict["anyOf"] = [{"properties": {"explain": {"const": False}}},
                            {"properties": {"rows": {"maxItems": settings.max_explain_rows}}}]
    search = components.get("SearchRequest")
    if search is not None:
        _json_row(search, ["text", "image"], limits, at_least_one=True)
        search["oneOf"] = search.pop("anyOf")  # exactly one of them
    for upload in _upload_bodies(schema):
        _form(upload, components, taken, limits)


def _operations(schema: dict[str, Any]):
    for item in schema.get("paths", {}).values():
        yield from (op for op in item.values() if isinstance(op, dict))


def _text(modality: Modality, limits: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "string", "pattern": not_blank()}
    caps = [value for name, value in limits.items() if name in modality.limits and name.endswith("_chars")]
    if caps:
        out["maxLength"] = int(min(caps))
    return out


def _value(modality: Modality, limits: dict[str, Any]) -> dict[str, Any]:
    """A present value of one modality in a JSON row."""
    if modality.is_file:
        # No `pattern` beside the format: schema-driven clients draw from a pattern in preference
        # to the format's generator, and base64 alone says nothing of the file inside.
        return {"type": "string", "format": base64_format(modality),
                "description": f"Base64 (or a data: URL) of one file in {', '.join(modality.formats)}."}
    return _text(modality, limits)


def _json_row(target: dict[str, Any], taken: list[str], limits: dict[str, Any], *, at_least_one: bool) -> None:
    """A JSON object with one nullable field per modality: the model's typed, the others null only."""
    properties = target.get("properties", {})
    present = []
    for name, prop in properties.items():
        if name not in MODALITIES:
            continue
        modality = MODALITIES[name]
        description = prop.get("description")
        if name in taken:
            value = _value(modality, limits)
            fresh: dict[str, Any] = {"anyOf": [value, {"type": "null"}]}
            present.append({"required": [name], "properties": {name: {"type": "string"}}})
        else:
            fresh = {"type": "null"}
            description = f"This model takes no {name} (null or absent only)."
        if description:
            fresh["description"] = description
        properties[name] = fresh
    if at_least_one and present:
        target["anyOf"] = present
        target["description"] = (target.get("description", "") + " At least one of: "
                                 + ", ".join(n for n in properties if n in taken) + ".").strip()


# Multipart bodies with a part per modality: a classification model's upload, a caption model's image.
UPLOAD_PATHS = ("/predict/upload", "/caption")


def _upload_bodies(schema: dict[str, Any]):
    for path in UPLOAD_PATHS:
        body = schema.get("paths", {}).get(path, {}).get("post", {}).get("requestBody", {})
        if "multipart/form-data" in body.get("content", {}):
            yield body


def _form(request_body: dict[str, Any], components: dict[str, Any], taken: list[str], limits: dict[str, Any]) -> None:
    """The multipart body: a binary file part per file modality, a form field per text modality
    (an empty one counts as absent, as in a browser form); parts of modalities the model does not
    take are not described (sending one is a 422)."""
    media = request_body["content"]["multipart/form-data"]
    ref = media.get("schema", {}).get("$ref", "")
    body = components.get(ref.rsplit("/", 1)[-1]) if ref else media.get("schema")
    if body is None:
        return
    properties = body.setdefault("properties", {})
    encoding = media.setdefault("encoding", {})
    present = []
    for name in [n for n in properties if n in MODALITIES]:
        modality = MODALITIES[name]
        if name not in taken:
            del properties[name]
            continue
        description = properties[name].get("description")
        if modality.is_file:
            value = {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream"}
            encoding[name] = {"contentType": ", ".join(media_types(modality))}
            present.append({"required": [name]})
        else:
            value = _text(modality, limits)
            value["pattern"] = f"^$|{not_blank()}"
            present.append({"required": [name], "properties": {name: {"minLength": 1}}})
        if description:
            value["description"] = description
        properties[name] = value
    if present:
        body["anyOf"] = present
        request_body["required"] = True  # an empty request has none of the inputs
