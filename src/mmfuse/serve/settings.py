"""ServeSettings: every knob of `mmfuse serve` in one place (the CLI flags map onto these fields)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

MiB = 1024 * 1024
# Predictor encodes requests of up to this many rows directly; bigger ones go through the
# on-disk feature cache, which a server must not fill with its users' inputs.
MAX_FORWARD_ROWS = 256
# A row asked to explain itself is predicted three times (both, without image, without text).
EXPLAIN_FACTOR = 3


@dataclass
class ServeSettings:
    model_dir: Path
    index_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None          # bearer token; required to bind beyond loopback
    max_batch: int = 32               # rows per forward pass
    max_wait_ms: float = 5.0          # how long the first request of a batch waits for company
    batching: bool = True
    max_queue: int = 256              # waiting requests before answering 503
    max_rows: int = 64                # rows in one request
    max_body_bytes: int = 8 * MiB
    max_pixels: int = 25_000_000      # checked from the image header, before decoding
    max_text_chars: int = 2_000
    timeout_s: float = 30.0           # per request, queueing included
    mask_pii: bool = False            # mask emails / phone numbers / id numbers in logged texts

    def check(self) -> "ServeSettings":
        limits = {"max_batch": self.max_batch, "max_queue": self.max_queue, "max_rows": self.max_rows,
                  "max_body_bytes": self.max_body_bytes, "max_pixels": self.max_pixels,
                  "max_text_chars": self.max_text_chars}
        for name, value in limits.items():
            if value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")
        if self.max_batch > MAX_FORWARD_ROWS:
            raise ConfigError(f"--max-batch must be at most {MAX_FORWARD_ROWS} (got {self.max_batch})")
        if self.max_rows * EXPLAIN_FACTOR > MAX_FORWARD_ROWS:
            raise ConfigError(f"--max-rows must be at most {MAX_FORWARD_ROWS // EXPLAIN_FACTOR} (got {self.max_rows})")
        if self.max_wait_ms < 0 or self.timeout_s <= 0:
            raise ConfigError("--max-wait-ms must be >= 0 and --timeout must be > 0")
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port must be 1..65535 (got {self.port})")
        return self
