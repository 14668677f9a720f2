"""mmfuse.privacy: each kind of personal data is masked when valid and left alone when only shaped
like it (a wrong checksum, an impossible date, a time, a version, a price); overlaps resolve to one
span; counts and the kinds filter. The last six tests are the defects bench/pii.py found (an IP
ending a sentence, an IBAN before a currency code, an E.164 number read as a card, dates and long
ids read as phones, a URL's trailing comma)."""
from __future__ import annotations

import pytest

from mmfuse.privacy import KINDS, PiiMasker


@pytest.fixture(scope="module")
def masker() -> PiiMasker:
    return PiiMasker()


def cn_check_char(body: str) -> str:
    """ISO 7064 MOD 11-2, computed here so the test data does not lean on the module under test."""
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    return "10X98765432"[sum(int(d) * w for d, w in zip(body, weights)) % 11]


VALID = [
    ("card", "4111 1111 1111 1111"),                 # Visa, groups of 4
    ("card", "4111111111111111"),                    # plain digits
    ("card", "5555-5555-5555-4444"),                 # Mastercard, dashes
    ("card", "378282246310005"),                     # Amex, 15 digits
    ("card", "6011 1111 1111 1117"),                 # Discover
    ("iban", "GB82 WEST 1234 5698 7654 32"),
    ("iban", "DE89370400440532013000"),
    ("iban", "FR1420041010050500013M02606"),
    ("us_ssn", "123-45-6789"),
    ("us_ssn", "078-05-1120"),
    ("cn_resident_id", "11010519491231002X"),
    ("cn_resident_id", "440305199003071236"),
    ("email", "bob@example.com"),
    ("email", "first.last+tag@mail.example.co.uk"),
    ("ip", "192.168.1.20"),
    ("ip", "2001:db8::8a2e:370:7334"),
    ("ip", "2001:0db8:0000:0000:0000:8a2e:0370:7334"),
    ("ip", "::1"),
    ("url_credentials", "https://bob:hunter2@db.example.com/x"),
    ("url_credentials", "postgres://u:p@db:5432/x"),
    ("secret", "sk-" + "a1B2" * 8),
    ("secret", "ghp_" + "aB3d" * 9),
    ("secret", "AKIAIOSFODNN7EXAMPLE"),
    ("secret", "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"),
    ("phone", "+1 201-555-0123"),
    ("phone", "(201) 555-0123"),
    ("phone", "+44 7400 123456"),
    ("phone", "+49 30 123456"),
    ("phone", "+33 6 12 34 56 78"),
    ("phone", "+91 81234 56789"),
    ("phone", "+86 131 2345 6789"),
    ("phone", "+55 11 96123-4567"),
    ("phone", "+81 90-1234-5678"),
]

NEAR_MISSES = [
    ("card, wrong Luhn digit", "4111 1111 1111 1112"),
    ("card, wrong Luhn digit, plain", "4111111111111112"),
    ("card, wrong Luhn digit, Amex", "378282246310006"),
    ("IBAN, wrong check digits", "GB83 WEST 1234 5698 7654 32"),
    ("IBAN, wrong check digits, compact", "DE88370400440532013000"),
    ("SSN, area 666", "666-12-3456"),
    ("SSN, area 000", "000-12-3456"),
    ("SSN, area 9xx", "912-34-5678"),
    ("SSN, group 00", "123-00-6789"),
    ("CN id, wrong check char", "110105194912310021"),
    ("IP-shaped, octet > 255", "999.1.1.1"),
    ("time", "12:30:00"),
    ("version", "10.0.19045"),
    ("version", "v1.2.3"),
    ("price", "$1,299.99"),
    ("date", "2024-05-17"),
    ("date", "17/05/2024"),
    ("short sk- token", "sk-short"),
    ("password too short", "password: abc"),
    ("count", "3 circles"),
]


@pytest.mark.parametrize("kind,value", VALID, ids=[f"{k}:{v}" for k, v in VALID])
def test_valid_value_is_masked(masker, kind, value):
    text = f"please note {value} for later"
    start = len("please note ")
    assert masker.spans(text) == [(start, start + len(value), kind)]
    assert masker.mask(text) == f"please note [{kind.upper()}] for later"


@pytest.mark.parametrize("why,value", NEAR_MISSES, ids=[w for w, _ in NEAR_MISSES])
def test_near_miss_is_not_masked(masker, why, value):
    text = f"please note {value} for later"
    assert masker.spans(text) == []
    assert masker.mask(text) == text


def test_cn_id_with_impossible_birth_date_is_not_masked(masker):
    body = "11010519491331002"                     # born 1949-13-31
    value = body + cn_check_char(body)             # the check character itself is right
    assert value == "110105194913310021"
    assert masker.spans(f"id {value} on file") == []


def test_keyword_secrets_mask_only_the_value(masker):
    assert masker.mask("config: api_key=abcd1234efgh ok") == "config: api_key=[SECRET] ok"
    assert masker.mask("password: correct-horse-battery then") == "password: [SECRET] then"


def test_url_credentials_win_over_the_email_inside(masker):
    text = "https://bob:hunter2@db.example.com/x"
    assert PiiMasker(kinds=["email"]).spans(text)   # the e-mail recognizer alone does claim part of it
    assert masker.spans(text) == [(0, len(text), "url_credentials")]
    assert masker.mask(f"dsn {text} here") == "dsn [URL_CREDENTIALS] here"


def test_text_without_personal_data_is_unchanged():
    masker = PiiMasker()
    for text in ["what color is the shape?", "is there a red circle in the image?", "how many triangles?", ""]:
        assert masker.mask(text) == text
    assert sum(masker.counts.values()) == 0


def test_counts_by_kind():
    masker = PiiMasker()
    masked = masker.mask("mail bob@example.com or alice@example.org, card 4111 1111 1111 1111")
    assert masked == "mail [EMAIL] or [EMAIL], card [CARD]"
    masker.mask("server 192.168.1.20 and bob@example.com")
    assert masker.counts == {"email": 3, "card": 1, "ip": 1}


def test_kinds_filter_masks_only_those_kinds():
    text = "mail bob@example.com, card 4111 1111 1111 1111, ssn 123-45-6789"
    masker = PiiMasker(kinds=["email"])
    assert masker.mask(text) == "mail [EMAIL], card 4111 1111 1111 1111, ssn 123-45-6789"
    assert masker.counts == {"email": 1}


def test_unknown_kind_is_refused_by_name():
    with pytest.raises(ValueError, match="nope"):
        PiiMasker(kinds=["nope"])
    assert "email" in KINDS and len(KINDS) == 9


# ------------------------------------------------------------------- defects found by bench/pii.py (fixed)


def test_ip_ending_a_sentence_is_masked(masker):
    assert masker.spans("My server is 10.0.0.1.") == [(13, 21, "ip")]


def test_iban_followed_by_currency_code_is_masked(masker):
    assert masker.spans("Pay DE89370400440532013000 EUR 40 by Monday") == [(4, 26, "iban")]


def test_e164_phone_is_not_a_card(masker):
    assert masker.spans("call +4915123456902 today") == [(5, 19, "phone")]


def test_dotted_date_is_not_a_phone(masker):
    assert masker.spans("Born 08.09.2022 in a small town") == []


def test_16_digit_tracking_id_is_not_a_phone(masker):
    assert masker.spans("tracking id 0210869867880921") == []


def test_url_credentials_leave_trailing_punctuation(masker):
    assert masker.mask("sent from https://bob:hunter2@db.example.com/x, thanks") == \
        "sent from [URL_CREDENTIALS], thanks"
