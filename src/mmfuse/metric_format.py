"""Metrics as people and JSON files see them: an undefined metric (NaN) is said to be undefined."""
from __future__ import annotations

from typing import Any


def format_metric(value: float | None) -> str:
    """A metric for people: 4 decimals, or "undefined" (e.g. AUROC on a split lacking a class;
    None is how metrics.json stores it)."""
    return "undefined" if value is None or value != value else f"{value:.4f}"


def json_safe(value: Any) -> Any:
    """NaN -> None, recursively, so metrics.json stays valid JSON (NaN is not JSON)."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
