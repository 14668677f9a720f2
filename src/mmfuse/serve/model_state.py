"""The served model's life: loading in the background at startup, then ready (or failed)."""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from .runner import ModelRunner

log = logging.getLogger("mmfuse.serve")


class ModelState:
    """`wrap` turns what `load` returns into the runner the batcher calls with rows: a
    ModelRunner around a Predictor, or a CaptionRunner around a captioner (serve/captions.py)."""

    def __init__(self, load: Callable[[], Any], after_load: Callable[[], Any] | None = None,
                 wrap: Callable[[Any], Any] = ModelRunner):
        self.load, self.after_load, self.wrap = load, after_load, wrap
        self.status = "loading"   # -> "ready" | "failed"
        self.runner: Any = None  # a ModelRunner unless `wrap` says otherwise
        self.error: str | None = None
        self.thread = threading.Thread(target=self._load, name="mmfuse-load", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _load(self) -> None:
        started = time.perf_counter()
        try:
            self.runner = self.wrap(self.load())
        except Exception as error:  # noqa: BLE001 - reported by /health/ready and the log
            self.error = f"{type(error).__name__}: {error}"
            self.status = "failed"
            log.error("model failed to load: %s", self.error)
            return
        if self.after_load is not None:
            self.after_load()
        self.status = "ready"
        log.info("model ready in %.1f s (%s)", time.perf_counter() - started, self.runner.summary)
