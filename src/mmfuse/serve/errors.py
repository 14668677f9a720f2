"""API errors: every refusal is a JSON body naming the field at fault, never a bare 500.

Body: {"error": KIND, "field": FIELD, "message": TEXT}. KIND is a short stable word (also the
label of the errors metric); FIELD names the request part (`rows[0].image`, `body`,
`Authorization`, ...) or is null when no field is to blame.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("mmfuse.serve")

HTTP_KINDS = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
              408: "timeout", 413: "too_large", 415: "unsupported_media_type", 422: "invalid_input"}


class ApiError(Exception):
    def __init__(self, status: int, kind: str, message: str, *, field: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.field = status, kind, message, field
        self.headers = headers or {}


def invalid(field: str, message: str, status: int = 422) -> ApiError:
    return ApiError(status, HTTP_KINDS.get(status, "invalid_input"), message, field=field)


def unavailable(kind: str, message: str, retry_after_s: int = 1) -> ApiError:
    return ApiError(503, kind, message, headers={"Retry-After": str(retry_after_s)})


def field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """('body', 'rows', 0, 'text') -> 'rows[0].text' — how a client would address the value."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "form", "file"):
        parts = parts[1:]
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return printable(path or "body")


def printable(text: str | None) -> str | None:
    """`text` safe to encode as UTF-8: a field name may hold lone surrogates (a raw invalid byte
    in a JSON key), which would turn the error answer itself into a 500."""
    return None if text is None else text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_response(error: ApiError) -> JSONResponse:
    body = {"error": error.kind, "field": printable(error.field), "message": printable(error.message)}
    return JSONResponse(body, status_code=error.status, headers=error.headers)


def install_handlers(app: FastAPI, count_error: Callable[[str], None]) -> None:
    async def on_api_error(request: Request, error: ApiError) -> JSONResponse:
        count_error(error.kind)
        return error_response(error)

    async def on_validation(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = error.errors()
        first = problems[0] if problems else {"loc": ("body",), "msg": "invalid request"}
        details = [{"field": field_path(p.get("loc", ())), "message": printable(p.get("msg", ""))} for p in problems]
        count_error("invalid_input")
        body = {"error": "invalid_input", "field": field_path(first.get("loc", ())),
                "message": printable(first.get("msg", "invalid request")), "details": details[:20]}
        return JSONResponse(body, status_code=422)

    async def on_http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        kind = HTTP_KINDS.get(error.status_code, "http_error")
        count_error(kind)
        field = "body" if error.status_code in (400, 408, 413) else None
        body = {"error": kind, "field": field, "message": str(error.detail)}
        return JSONResponse(body, status_code=error.status_code, headers=getattr(error, "headers", None))

    async def on_unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        count_error("internal")
        return JSONResponse({"error": "internal", "field": None, "message": "internal server error"},
                            status_code=500)

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
