"""A fast lane for the request the server answers most: a well-formed JSON `POST /predict`.

FastAPI's per-request machinery (route matching, dependency solving, exit stacks, telemetry
hooks) took about a third of the event loop's time per single-row request on 2 cores, where the
event loop is what limits the throughput. This middleware (the innermost of the app's own, so
inside BodyLimit and RequestMetrics) answers such a request with the same steps in FastAPI's
order: read the body (BodyLimit's 413 / 408 as they are), parse it as JSON (`StrictRequest`),
check the token, validate it against `PredictRequest`, and predict (`routes.predict_json`, the
route's own code). A refusal raised on the way is answered by the app's own exception handlers.

Whatever is not that hands the request to FastAPI untouched, the body replayed when it was
already read: another path or method, a content type other than JSON, an empty body, JSON that
does not parse, or a body that fails validation. So every malformed request gets exactly
FastAPI's answer, and the route's OpenAPI entry is FastAPI's (it is still registered).
"""
from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .bodies import StrictRequest
from .routes import api, predict_json, require_token
from .schemas import PredictRequest

PATH = "/predict"


class FastLane:
    def __init__(self, app: ASGIApp):
        self.app = app
        self.route = None  # FastAPI's route of POST /predict: the endpoint label of the metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (scope["type"] == "http" and scope["path"] == PATH and scope["method"] == "POST"
                and _json_content(scope)):
            await self.app(scope, receive, send)
            return
        if self.route is None:
            self.route = _route()
        scope["route"] = self.route  # what FastAPI would set: the metrics' endpoint label
        request = StrictRequest(scope, receive)
        try:
            raw = await request.body()
            try:
                payload = await request.json() if raw else None
            except (json.JSONDecodeError, UnicodeDecodeError):
                payload = None
            if payload is None:
                await self.app(scope, _replay(raw, receive), send)  # FastAPI answers it
                return
            await require_token(request)  # FastAPI solves it after parsing, before validating
            try:
                body = PredictRequest.model_validate(payload)
            except ValidationError:
                await self.app(scope, _replay(raw, receive), send)
                return
            response = await predict_json(request, body)
        except Exception as error:  # noqa: BLE001 - answered as the app answers it, or re-raised
            handler = _handler(scope["app"].exception_handlers, error)
            if handler is None:
                raise  # to ServerErrorMiddleware, like an unexpected error in any route
            response = await handler(request, error)
        await response(scope, receive, send)


def _json_content(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == b"application/json"
    return False


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` with the body already read handed back first."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _handler(handlers: dict[Any, Any], error: Exception):
    """The app's handler for `error` (the nearest class), except the catch-all for Exception,
    which ServerErrorMiddleware applies once the error reaches it."""
    for cls in type(error).__mro__:
        if cls is Exception:
            return None
        if cls in handlers:
            return handlers[cls]
    return None


def _route():
    return next(route for route in api.routes if route.path == PATH and "POST" in route.methods)
