"""Prometheus metrics of one app (its own registry, so several apps can live in one process)."""
from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("mmfuse_requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.latency = Histogram("mmfuse_request_seconds", "Request latency", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_rows = Histogram("mmfuse_batch_rows", "Rows per forward pass", buckets=BATCH_BUCKETS, registry=r)
        self.batch_requests = Histogram("mmfuse_batch_requests", "Requests per forward pass",
                                        buckets=BATCH_BUCKETS, registry=r)
        self.forward_seconds = Histogram("mmfuse_forward_seconds", "Model time per forward pass",
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.errors = Counter("mmfuse_errors", "Refused or failed requests by kind", ["kind"], registry=r)
        self.queue_depth = Gauge("mmfuse_queue_depth", "Requests waiting for the model", registry=r)
        self.ready = Gauge("mmfuse_model_ready", "1 once the model is loaded", registry=r)

    def count_error(self, kind: str) -> None:
        self.errors.labels(kind=kind).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
