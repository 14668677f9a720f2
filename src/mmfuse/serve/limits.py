"""The request body cap and deadline, enforced while the body is read — not after it is all in memory.

An announced Content-Length over the cap is refused before a byte is read; a chunked body is
counted as it streams and refused the moment it passes the cap. Ours rather than FastAPI's
`max_body_size` (Starlette's RequestBodyLimitMiddleware) only because that one answers the
announced case in plain text, and every refusal here is JSON naming the field.

The whole body must arrive within `timeout_s` of the request's start (408, and the connection is
closed): a client trickling one byte a second would otherwise hold a connection and a worker for
as long as it likes. Once the body is in, `receive` is passed through untouched (it then only
waits for a disconnect, which may take as long as the response does).
"""
from __future__ import annotations

import asyncio
import time
from typing import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError, error_response


def too_large(limit: int, size: int | None = None) -> str:
    got = f": {size:,} bytes" if size is not None else ""
    return f"request body too large{got} (limit {limit:,} bytes)"


class BodyLimit:
    def __init__(self, app: ASGIApp, *, max_bytes: int, timeout_s: float, count_error: Callable[[str], None]):
        self.app, self.max_bytes, self.timeout_s, self.count_error = app, max_bytes, timeout_s, count_error

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
        received, complete = 0, False
        deadline = time.monotonic() + self.timeout_s

        async def counted() -> Message:
            nonlocal received, complete
            if complete:
                return await receive()
            try:
                message = await _within(receive(), deadline)
            except asyncio.TimeoutError:
                # Raised inside body parsing like the 413 below; `Connection: close` because the
                # rest of the body may still be on its way.
                raise HTTPException(408, f"request body not received within {self.timeout_s:g} s",
                                    headers={"Connection": "close"}) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > self.max_bytes:
                    # Raised inside body parsing: FastAPI passes HTTPExceptions through to our
                    # handler, which answers 413 in JSON (counted there).
                    raise HTTPException(413, too_large(self.max_bytes))
            return message

        await self.app(scope, counted, send)


if hasattr(asyncio, "timeout_at"):  # Python 3.11+: a deadline on the task itself, no task per call
    async def _within(awaitable, deadline: float):
        loop = asyncio.get_running_loop()
        async with asyncio.timeout_at(loop.time() + max(0.0, deadline - time.monotonic())):
            return await awaitable
else:  # pragma: no cover - Python 3.10
    async def _within(awaitable, deadline: float):
        return await asyncio.wait_for(awaitable, max(0.0, deadline - time.monotonic()))
