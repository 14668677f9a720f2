"""The request body cap, enforced while the body is read — not after it is all in memory.

An announced Content-Length over the cap is refused before a byte is read; a chunked body is
counted as it streams and refused the moment it passes the cap. Ours rather than FastAPI's
`max_body_size` (Starlette's RequestBodyLimitMiddleware) only because that one answers the
announced case in plain text, and every refusal here is JSON naming the field.
"""
from __future__ import annotations

from typing import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError, error_response


def too_large(limit: int, size: int | None = None) -> str:
    got = f": {size:,} bytes" if size is not None else ""
    return f"request body too large{got} (limit {limit:,} bytes)"


class BodyLimit:
    def __init__(self, app: ASGIApp, *, max_bytes: int, count_error: Callable[[str], None]):
        self.app, self.max_bytes, self.count_error = app, max_bytes, count_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            self.count_error("too_large")
            error = ApiError(413, "too_large", too_large(self.max_bytes, int(declared)), field="body")
            await error_response(error)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside body parsing: FastAPI passes HTTPExceptions through to our
                    # handler, which answers 413 in JSON (counted there).
                    raise HTTPException(413, too_large(self.max_bytes))
            return message

        await self.app(scope, counted, send)
