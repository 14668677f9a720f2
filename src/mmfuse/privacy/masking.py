"""Mask personal data in texts: every recognizer's spans, overlaps resolved by priority, each span
replaced by its kind in brackets (`[EMAIL]`). Counts by kind are kept; the values never are."""
from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Iterator, Protocol

from .recognizers import KINDS, RECOGNIZERS

DEFAULT_REGIONS = ("US", "GB", "DE", "FR", "IN", "CN", "BR", "JP")


class Finder(Protocol):
    """More spans, of any kinds, after mmfuse's recognizers (presidio.PresidioFinder)."""

    def find(self, text: str) -> Iterable[tuple[int, int, str]]: ...


class PiiMasker:
    def __init__(self, kinds: tuple[str, ...] | list[str] | None = None,
                 phone_regions: tuple[str, ...] | list[str] = DEFAULT_REGIONS, extra: Finder | None = None):
        unknown = set(kinds or ()) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown personal-data kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
        self.recognizers = [r for r in RECOGNIZERS if kinds is None or r.kind in kinds]
        self.regions = tuple(region.upper() for region in phone_regions)
        self.extra = extra
        self.counts: Counter[str] = Counter()

    def candidates(self, text: str) -> Iterator[tuple[int, int, str]]:
        """(start, end, kind) in priority order: ours, recognizer by recognizer, then the extra finder's."""
        for recognizer in self.recognizers:
            for start, end in sorted(set(recognizer.find(text, self.regions))):
                yield start, end, recognizer.kind
        if self.extra is not None:
            yield from self.extra.find(text)

    def spans(self, text: str) -> list[tuple[int, int, str]]:
        """Non-overlapping (start, end, kind), in text order."""
        taken: list[tuple[int, int, str]] = []
        for start, end, kind in self.candidates(text):
            if not any(start < e and s < end for s, e, _ in taken):
                taken.append((start, end, kind))
        return sorted(taken)

    def mask(self, text: str) -> str:
        if not text:
            return text
        out, last = [], 0
        for start, end, kind in self.spans(text):
            out += [text[last:start], f"[{kind.upper()}]"]
            last = end
            self.counts[kind] += 1
        return "".join(out) + text[last:] if out else text


def masker_for(privacy: Any) -> PiiMasker:
    """The masker a config's `privacy` section asks for: Presidio after our recognizers only with
    `privacy.presidio` (its import and its spaCy pipeline cost seconds; the default costs none)."""
    extra = None
    if privacy.presidio:
        from .presidio import PresidioFinder

        extra = PresidioFinder(privacy.spacy_model)
    return PiiMasker(privacy.kinds, privacy.phone_regions, extra)
