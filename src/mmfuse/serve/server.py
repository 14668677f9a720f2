"""The uvicorn server under the app, with what uvicorn leaves to its user.

- Slow clients. uvicorn times out idle keep-alive connections only: a client that connects and
  sends its headers one byte at a time is never cut off (neither h11 nor httptools has a header
  timeout; the C parser httptools is used when installed, h11 otherwise). Here a
  connection whose request headers are not complete within `header_timeout_s` is closed, and
  connections beyond `max_connections` are closed as soon as they open (each holds a socket and
  buffers before it sends a byte); beyond max_connections requests in progress, uvicorn answers
  503 (`limit_concurrency`). A slow body gets 408 from `limits.BodyLimit`. So a slow client holds
  a connection for at most header_timeout_s + body_timeout_s, never more than max_connections
  connections are open at once, and at most 16 KiB of incomplete headers is buffered for each
  (h11's own cap; with httptools, which has none, a request whose headers pass it gets a 400).
- Shutdown with a backlog: uvicorn waits `timeout_graceful_shutdown` for open requests, then
  cancels them and answers each a plain-text 500. Here the batcher is closed first, so requests
  still queued for the model get a JSON 503 at once and only the batch in the model finishes.
- Secrets in URLs: the access log writes each request's path and query string; the values of
  query parameters named like a credential (`?token=...`) are redacted first.
- A model that fails to load: with `exit_on_failed_load` (`mmfuse serve`) the server stops and
  `serve` raises, so the process exits non-zero instead of staying up and useless.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import re
import socket
from typing import Any
from urllib.parse import unquote_plus

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

try:  # the C parser (the `serve` extra): a request's parsing costs a fraction of h11's pure Python
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools not installed
    HttpToolsProtocol = None

GRACEFUL_SHUTDOWN_S = 5
MAX_HEADER_BYTES = h11._connection.DEFAULT_MAX_INCOMPLETE_EVENT_SIZE  # 16 KiB
KEEP_ALIVE_S = 5
# Query parameters whose values never reach a log (compared lower-case, after URL-decoding).
SECRET_PARAMETERS = re.compile(r"(.*[_-])?(token|api[_-]?key|key|secret|password|passwd|auth|signature|sig)")


class HeaderDeadline:
    """A deadline for request headers, shared by both protocols: a timer runs while the
    connection awaits headers (`_awaiting_headers`), and closes it if they are not complete in time."""

    header_timeout_s: float
    _header_timer: asyncio.TimerHandle | None = None

    def _awaiting_headers(self) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def _watch_headers(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _stop_watching(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._awaiting_headers() and not self.transport.is_closing():
            self.transport.close()


class GuardedH11(HeaderDeadline, H11Protocol):
    """uvicorn's h11 protocol with a deadline for request headers and a cap on open connections."""

    def __init__(self, *args: Any, header_timeout_s: float, max_connections: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.header_timeout_s, self.max_connections = header_timeout_s, max_connections

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.close()
            return
        self._watch_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # IDLE: the client has not finished a request's headers yet (h11 buffers partial ones).
        if self.conn.their_state is h11.IDLE:
            self._watch_headers()
        else:
            self._stop_watching()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_watching()
        super().connection_lost(exc)

    def _awaiting_headers(self) -> bool:
        return self.conn.their_state is h11.IDLE


class CoalescedWrites:
    """A transport whose writes within one step of the event loop leave as one: uvicorn writes a
    response's status line and headers, then its body, which would be two sends (two packets, two
    wake-ups of the client) for every small JSON answer. Everything else is the transport's own."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport, self._loop = transport, loop
        self._pending: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self._pending is None:
            self._pending = [data]
            self._loop.call_soon(self.flush)
        else:
            self._pending.append(data)

    def flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            self._transport.write(b"".join(pending))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GuardedHttpTools(HeaderDeadline, HttpToolsProtocol or object):  # type: ignore[misc]
    """The same guards on uvicorn's httptools protocol: the header deadline runs from a
    connection's opening and from the first byte of each request until its headers are complete."""

    def __init__(self, *args: Any, header_timeout_s: float, max_connections: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.header_timeout_s, self.max_connections = header_timeout_s, max_connections
        self._in_headers = True  # nothing received yet: the first request's headers are awaited
        self._header_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.close()
            return
        self.transport = CoalescedWrites(transport, self.loop)  # what each request's cycle writes to
        self._watch_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_headers and not self.transport.is_closing():
            # Every byte since the request began is still header (h11 refuses past the same cap).
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES:
                self.send_400_response("Invalid HTTP request received.")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers, self._header_bytes = True, 0
        self._watch_headers()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._stop_watching()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_watching()
        super().connection_lost(exc)

    def _awaiting_headers(self) -> bool:
        return self._in_headers


def redact_query(path: str) -> str:
    """`/predict?token=abc&x=1` -> `/predict?token=[REDACTED]&x=1` (any credential-like name)."""
    base, mark, query = path.partition("?")
    if not mark:
        return path
    parts = []
    for part in query.split("&"):
        name, equals, _ = part.partition("=")
        secret = equals and SECRET_PARAMETERS.fullmatch(unquote_plus(name).lower())
        parts.append(f"{name}=[REDACTED]" if secret else part)
    return base + "?" + "&".join(parts)


class RedactQuery(logging.Filter):
    """On uvicorn's access log, whose record arguments are (client, method, path?query, http, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_query(arg) if isinstance(arg, str) and "?" in arg else arg
                                for arg in record.args)
        return True


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, *, exit_on_failed_load: bool):
        super().__init__(config)
        self.app, self.exit_on_failed_load = app, exit_on_failed_load

    async def on_tick(self, counter: int) -> bool:
        if self.exit_on_failed_load and self.app.state.model.status == "failed":
            return True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        batcher = getattr(self.app.state, "batcher", None)
        if batcher is not None:
            batcher.close()  # queued requests: JSON 503 now, not a plain-text 500 after the grace period
        await super().shutdown(sockets)

    def model_failed(self) -> str | None:
        state = self.app.state.model
        return state.error if state.status == "failed" else None


def make_server(app: FastAPI, *, host: str, port: int, log_level: str = "info",
                exit_on_failed_load: bool = False, http: str = "auto") -> Server:
    """`http`: "httptools" (the C parser), "h11" (pure Python), or "auto" (httptools if installed)."""
    settings = app.state.settings
    if http == "auto":
        http = "h11" if HttpToolsProtocol is None else "httptools"
    guarded = GuardedHttpTools if http == "httptools" else GuardedH11
    protocol = functools.partial(guarded, header_timeout_s=settings.header_timeout_s,
                                 max_connections=settings.max_connections)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on", server_header=False,
                            # uvicorn counts the asking connection too: requests are served up to the cap
                            http=protocol, limit_concurrency=settings.max_connections + 1,
                            timeout_keep_alive=KEEP_ALIVE_S, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    access = logging.getLogger("uvicorn.access")  # configured by uvicorn.Config above
    if not any(isinstance(f, RedactQuery) for f in access.filters):
        access.addFilter(RedactQuery())
    return Server(config, app, exit_on_failed_load=exit_on_failed_load)
