"""ServeSettings: every knob of `mmfuse serve` in one place (the CLI flags map onto these fields).

The input caps are not spelt out here: each registered modality's `limits` (max_pixels,
max_text_chars, max_audio_seconds, ...) becomes a field, so a new modality's caps are server
settings without a change to this file. SERVER_DEFAULTS holds the caps a server keeps tighter
than training does.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..modalities import MODALITIES

MiB = 1024 * 1024
# Predictor encodes requests of up to this many rows directly; bigger ones go through the
# on-disk feature cache, which a server must not fill with its users' inputs.
MAX_FORWARD_ROWS = 256
# A row asked to explain itself is predicted once with all its inputs and once without each.
EXPLAIN_FACTOR = 1 + len(MODALITIES)
# Caps where a server is stricter than the modality's training default.
SERVER_DEFAULTS: dict[str, Any] = {"max_pixels": 25_000_000}  # checked from the image header


def limit_fields() -> dict[str, tuple[str, type, Any, str]]:
    """cap name -> (modality, type, server default, meaning), from the registry."""
    return {name: (modality.name, kind, SERVER_DEFAULTS.get(name, default), meaning)
            for modality in MODALITIES.values() for name, (kind, default, meaning) in modality.limits.items()}


@dataclass
class _Settings:
    model_dir: Path
    index_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None          # bearer token; required to bind beyond loopback
    max_batch: int = 32               # rows per forward pass
    max_wait_ms: float = 5.0          # how long the first request of a batch waits for company
    batching: bool = True
    max_queue: int = 256              # waiting requests before answering 503
    max_rows: int = min(64, MAX_FORWARD_ROWS // EXPLAIN_FACTOR)  # rows in one request
    max_explain_rows: int = 8         # rows one request may ask to explain (tens to hundreds of ms each)
    max_body_bytes: int = 8 * MiB
    timeout_s: float = 30.0           # per request once its body is in: decoding, queue and model
    mask_pii: bool = False            # mask personal data (mmfuse.privacy) in request texts and logs
    # Decoded image pixels in one request, summed over its rows (read from the headers first):
    # 64 rows of 5000x5000 images are 1.6 G pixels even when every one is under max_pixels.
    max_request_pixels: int = 100_000_000
    # Slow clients: a request's headers must arrive within header_timeout_s (else the connection is
    # closed) and its body within body_timeout_s (else 408); open connections are capped.
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 1000

    def limits(self) -> dict[str, Any]:
        """Every modality's caps as this server applies them (the `limits` of `from_upload`)."""
        return {name: getattr(self, name) for name in limit_fields()}

    def check(self) -> "ServeSettings":
        counts = {"max_batch": self.max_batch, "max_queue": self.max_queue, "max_rows": self.max_rows,
                  "max_explain_rows": self.max_explain_rows,
                  "max_body_bytes": self.max_body_bytes, "max_request_pixels": self.max_request_pixels,
                  "max_connections": self.max_connections, **self.limits()}
        caps = limit_fields()
        for name, value in counts.items():
            whole = name not in caps or caps[name][1] is int
            if whole and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")
            if not value > 0:  # also refuses NaN
                raise ConfigError(f"--{name.replace('_', '-')} must be greater than 0 (got {value})")
        if self.max_batch > MAX_FORWARD_ROWS:
            raise ConfigError(f"--max-batch must be at most {MAX_FORWARD_ROWS} (got {self.max_batch})")
        if self.max_rows * EXPLAIN_FACTOR > MAX_FORWARD_ROWS:
            raise ConfigError(f"--max-rows must be at most {MAX_FORWARD_ROWS // EXPLAIN_FACTOR} (got {self.max_rows})")
        if self.max_wait_ms < 0 or self.timeout_s <= 0:
            raise ConfigError("--max-wait-ms must be >= 0 and --timeout must be > 0")
        if not (self.header_timeout_s > 0 and self.body_timeout_s > 0):
            raise ConfigError("header_timeout_s and body_timeout_s must be > 0")
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port must be 1..65535 (got {self.port})")
        return self


# One field per registered cap: max_pixels (25,000,000 here), max_text_chars (2,000),
# max_audio_seconds (30), ... — keyword arguments like the fields above.
ServeSettings = dataclasses.make_dataclass(
    "ServeSettings",
    [(name, kind, dataclasses.field(default=default, metadata={"modality": modality, "help": meaning}))
     for name, (modality, kind, default, meaning) in limit_fields().items()],
    bases=(_Settings,), namespace={"__doc__": "Every knob of `mmfuse serve` (see the module docstring)."})
ServeSettings.__module__ = __name__
