"""Personal data in free text: one recognizer per kind, each a pattern for candidates and, where the
kind has one, its checksum (Luhn, IBAN mod 97, ISO 7064 for Chinese resident ids) so that ordinary
numbers are not masked. Phone numbers go through the `phonenumbers` library (libphonenumber's
metadata), which knows each region's numbering plan.

A recognizer returns (start, end) spans; `masking.py` resolves overlaps and replaces them.
"""
from __future__ import annotations

import datetime
import ipaddress
import re
from dataclasses import dataclass
from typing import Callable, Iterator

Span = tuple[int, int]


@dataclass(frozen=True)
class Recognizer:
    kind: str
    find: Callable[[str, tuple[str, ...]], Iterator[Span]]


def _matches(pattern: re.Pattern, valid: Callable[[str], bool] = lambda _: True):
    def find(text: str, _regions: tuple[str, ...]) -> Iterator[Span]:
        for match in pattern.finditer(text):
            group = 1 if match.re.groups else 0
            if valid(match.group(group)):
                yield match.span(group)
    return find


def digits(value: str) -> str:
    return re.sub(r"\D", "", value)


def luhn_valid(number: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(number)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def card_valid(candidate: str) -> bool:
    number = digits(candidate)
    return 13 <= len(number) <= 19 and len(set(number)) > 1 and luhn_valid(number)


def iban_valid(candidate: str) -> bool:
    compact = candidate.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")


def iban_spans(text: str, _regions: tuple[str, ...]) -> Iterator[Span]:
    """The longest prefix of each IBAN-shaped run that passes mod 97 (the run may have taken the
    next word: `DE89 3704 0044 0532 0130 00 EUR`)."""
    for match in IBAN.finditer(text):
        start, end = match.span()
        while end - start >= 15:
            if iban_valid(text[start:end]):
                yield start, end
                break
            end = text.rfind(" ", start, end) if " " in text[start:end] else end - 1
            while end > start and text[end - 1] == " ":
                end -= 1


def ssn_valid(candidate: str) -> bool:
    area, group, serial = re.split(r"[- ]", candidate)
    return area not in ("000", "666") and not area.startswith("9") and group != "00" and serial != "0000"


CN_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def cn_id_valid(candidate: str) -> bool:
    """GB 11643: 17 digits (region, birth date, sequence) and an ISO 7064 MOD 11-2 check character."""
    body, check = candidate[:17], candidate[17].upper()
    try:
        datetime.date(int(body[6:10]), int(body[10:12]), int(body[12:14]))
    except ValueError:
        return False
    return "10X98765432"[sum(int(d) * w for d, w in zip(body, CN_WEIGHTS)) % 11] == check


def ip_valid(candidate: str) -> bool:
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return True


DOTTED_DATE = re.compile(r"\d{1,2}[./]\d{1,2}[./]\d{2,4}")


def phone_spans(text: str, regions: tuple[str, ...]) -> Iterator[Span]:
    import phonenumbers

    for region in regions:
        for match in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
            # Short codes, prices, dates and long order numbers are valid somewhere (a German
            # pager number has 4 digits); a phone number a person writes has 7 to 15.
            count = len(digits(match.raw_string))
            if 7 <= count <= 15 and not DOTTED_DATE.fullmatch(match.raw_string):
                yield match.start, match.end


SECRET = re.compile(
    r"\b(sk-(?:proj-)?[A-Za-z0-9_-]{20,}|sk_(?:live|test)_[A-Za-z0-9]{16,}|gh[pousr]_[A-Za-z0-9]{36,}"
    r"|github_pat_[A-Za-z0-9_]{22,}|AKIA[0-9A-Z]{16}|xox[abprs]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35})\b"
    r"|(?i:\b(?:api[_-]?key|secret|token|password|passwd)\s*[:=]\s*)([^\s\"']{7,}[^\s\"'.,;:!?)])")


def secret_spans(text: str, _regions: tuple[str, ...]) -> Iterator[Span]:
    for match in SECRET.finditer(text):
        group = 1 if match.group(1) else 2
        yield match.span(group)


# In priority order: where two kinds claim overlapping text, the earlier one wins (a URL's
# credentials before the e-mail-like `user:pass@host`, a checksummed id before a phone number).
RECOGNIZERS: tuple[Recognizer, ...] = (
    Recognizer("url_credentials", _matches(re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/:@]+:[^\s/@]+@[^\s]*[^\s.,;:!?)\]'\"]"))),
    Recognizer("secret", secret_spans),
    Recognizer("email", _matches(re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"))),
    Recognizer("iban", iban_spans),
    Recognizer("cn_resident_id", _matches(re.compile(r"(?<![\dA-Za-z])(\d{17}[\dXx])(?![\dA-Za-z])"), cn_id_valid)),
    Recognizer("card", _matches(re.compile(r"(?<![\d+-])(\d(?:[ -]?\d){12,18})(?![\d-])"), card_valid)),
    Recognizer("us_ssn", _matches(re.compile(r"(?<![\d-])(\d{3}[- ]\d{2}[- ]\d{4})(?![\d-])"), ssn_valid)),
    Recognizer("ip", _matches(re.compile(r"(?<![\w.:])((?:\d{1,3}\.){3}\d{1,3}|(?:[0-9A-Fa-f]{0,4}:){2,7}"
                                         r"[0-9A-Fa-f]{0,4}(?:(?<=:)(?:\d{1,3}\.){3}\d{1,3})?)(?![\w:]|\.\w)"),
                                ip_valid)),
    Recognizer("phone", phone_spans),
)
KINDS = tuple(r.kind for r in RECOGNIZERS)
