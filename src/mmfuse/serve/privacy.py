"""Masking personal data in texts before they reach the request log (`mmfuse serve --mask-pii`).

The recognizers are mmfuse.privacy's (checksummed ids, libphonenumber's numbering plans), the same
that `privacy.mask_pii` applies to a table before training.
"""
from __future__ import annotations

from ..privacy import PiiMasker

PREVIEW_CHARS = 80


def mask_pii(text: str) -> str:
    # A masker per call: its counts are not wanted here, and a shared one would be mutated by
    # concurrent requests.
    return PiiMasker().mask(text)


def log_preview(text: str | None, *, mask: bool) -> str:
    """A short, single-line, optionally masked rendering of a user text for the request log."""
    if text is None:
        return "-"
    shown = mask_pii(text) if mask else text
    shown = " ".join(shown.split())
    return repr(shown[:PREVIEW_CHARS] + ("…" if len(shown) > PREVIEW_CHARS else ""))
