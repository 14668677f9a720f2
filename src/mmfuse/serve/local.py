"""A real uvicorn server on a free loopback port, in a background thread (tests, notebooks)."""
from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Iterator

from fastapi import FastAPI

from .server import make_server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running(app: FastAPI, *, startup_timeout_s: float = 30.0, log_level: str = "warning",
            http: str = "auto") -> Iterator[str]:
    """Serve `app` on http://127.0.0.1:PORT while the block runs; yields that base URL. The server
    is `mmfuse serve`'s (same timeouts and limits), except that it stays up if the model fails.
    `http`: the protocol implementation (see `server.make_server`)."""
    port = free_port()
    server = make_server(app, host="127.0.0.1", port=port, log_level=log_level, http=http)
    thread = threading.Thread(target=server.run, name="mmfuse-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start on port {port}")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
