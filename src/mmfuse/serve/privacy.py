"""Masking personal data (emails, phone numbers, id numbers) in texts before they reach a log.

Regular expressions rather than an NER stack (Presidio + spaCy) on purpose: logs only need the
common, well-shaped identifiers hidden, and this runs on every request.
"""
from __future__ import annotations

import re

_PATTERNS = [
    ("[EMAIL]", re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")),
    # Id numbers: IBANs, US social security numbers, payment cards (13-19 digits, grouped by 4).
    ("[ID]", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){3,7}(?: ?[A-Z0-9]{1,3})?\b")),
    ("[ID]", re.compile(r"\b\d{3}-\d{2}-\d{4}\b")),
    ("[ID]", re.compile(r"\b\d{4}(?:[ -]?\d{4}){2,3}(?:[ -]?\d{1,3})?\b")),
    # Phone numbers: an optional +country code and at least 7 digits in groups.
    ("[PHONE]", re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?\(?\d{2,4}\)?(?:[ .-]?\d{2,4}){2,4}(?!\w)")),
]
PREVIEW_CHARS = 80


def mask_pii(text: str) -> str:
    for replacement, pattern in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def log_preview(text: str | None, *, mask: bool) -> str:
    """A short, single-line, optionally masked rendering of a user text for the request log."""
    if text is None:
        return "-"
    shown = mask_pii(text) if mask else text
    shown = " ".join(shown.split())
    return repr(shown[:PREVIEW_CHARS] + ("…" if len(shown) > PREVIEW_CHARS else ""))
