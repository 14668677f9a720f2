"""Personal-data masking (mmfuse.privacy.PiiMasker): recall and precision per kind on a generated,
labelled set of sentences, false positives on sentences that hold no personal data, and speed.

    .venv/bin/python bench/pii.py [--seed 0] [--per-kind 180] [--negatives 400] [--show-misses 5]
                                  [--presidio [--spacy-model PATH]]

How the set is made (all from one seeded random.Random; nothing is downloaded):

* Positives, `--per-kind` per kind, every value generated VALID with its checksum computed here,
  independently of mmfuse.privacy.recognizers:
  - card: Visa 16, Mastercard 16 (51-55 and 2221-2720), Amex 15, Discover 16, 19-digit (Visa,
    UnionPay), Luhn check digit, printed as plain digits, in groups (4-4-4-4, Amex 4-6-5, 19 as
    4-4-4-4-3) with spaces or with dashes;
  - iban: GB 22, DE 22, FR 27, ES 24, NL 18, IT 27, CH 21 chars, ISO 13616 mod-97 check digits,
    printed compact and in groups of 4;
  - us_ssn: area 001-899 but not 666, group 01-99, serial 0001-9999, dashed;
  - cn_resident_id: a real 6-digit region code, a real birth date YYYYMMDD (1930-2012), a 3-digit
    sequence and the ISO 7064 MOD 11-2 check character (weights 7,9,10,5,8,4,2,1,6,3,7,9,10,5,8,4,2,
    table "10X98765432");
  - email: local parts with dots, plus tags, digits, dashes; subdomains; several TLDs;
  - ip: IPv4, IPv6 in full (8 groups) and compressed (`::`) forms;
  - url_credentials: `scheme://user:pass@host[:port]/path` for https, postgres, mysql, redis, ftp...;
  - secret: `sk-` + 32 alnum, `ghp_` + 36 alnum, `AKIA` + 16 upper alnum, `xoxb-` Slack tokens, and
    `api_key=...`, `password: ...`, `token=...` (only the value after the keyword must be covered);
  - phone: regions US, GB, DE, FR, IN, CN, BR, JP; `phonenumbers.example_number_for_type(region,
    MOBILE or FIXED_LINE)` with its last 2-3 digits replaced at random, kept only when
    `phonenumbers.is_valid_number` says so, printed with `phonenumbers.format_number` in
    INTERNATIONAL, NATIONAL and E164 formats.
  Each value is embedded in one of several sentence templates ("contact me at {}", "{} is my
  number", "sent from {}, thanks", ...). A positive is recalled when one returned span of the RIGHT
  kind covers the value's characters exactly or contains them (so a span may include a leading '+'
  or a neighbouring bracket); a span of another kind over it is a miss for the right kind and a
  false positive for the other kind.
* Negatives, `--negatives` of them: ordinary sentences with numbers that must NOT be masked: prices
  ("$1,299.99"), dates (2024-05-17, 17/05/2024), times (12:30:00), version strings (v1.2.3,
  10.0.19045), order numbers in card format with a wrong Luhn digit, 16-digit numbers failing Luhn,
  IBAN-shaped strings with wrong check digits, SSNs with area 000/666/9xx, 18-digit numbers with a
  wrong check character or an impossible birth date (the 18-digit ones also fail Luhn, so that they
  test the resident-id check and not the card one), counts ("3 circles") and easy-VQA style
  questions ("what color is the triangle?"). Every span on a negative is a false positive.

Table: per kind, the number of positive strings, recall, precision (correct spans of the kind / all
spans of that kind over positives and negatives) and false positives on negatives; then the
negatives by family, and the wall seconds and strings per second of `PiiMasker.mask` over the whole
set (default phone regions, the eight above). `--show-misses N` prints up to N missed positives and
N false positives per kind. `--presidio`: with Microsoft Presidio's analyzer after mmfuse's
recognizers (`privacy.presidio`; blank spaCy pipeline, or `--spacy-model`); the kinds only it
names (url, date_time, ...) get rows of their own, and every span of theirs is a false positive here.
"""
from __future__ import annotations

import argparse
import datetime
import ipaddress
import random
import string
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import phonenumbers

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mmfuse.privacy import KINDS, PiiMasker  # noqa: E402

TEMPLATES = [
    "contact me at {}",
    "{} is my number",
    "sent from {}, thanks",
    "Please use {} for the transfer.",
    "my details: {}",
    "hi, it's {} - call back later",
    "(see {})",
    "Ref: {}; the rest is in the attached file",
    "\"{}\" was written on the form",
    "you can reach the account via {} until Friday",
    "My address is {}.",
    "{} EUR 40 is due on Monday",
]
ALNUM = string.ascii_letters + string.digits
UPPER_ALNUM = string.ascii_uppercase + string.digits


@dataclass
class Sample:
    text: str
    kind: str           # a kind of KINDS for positives, "negative" for negatives
    start: int = 0      # where the value lies in text (positives)
    end: int = 0
    family: str = ""    # the generator: card/amex, phone/GB/E164, negative/price, ...


# ---------------------------------------------------------------------------------------- checksums


def luhn_check_digit(body: str) -> str:
    """The digit that makes body + digit pass Luhn."""
    total = 0
    for position, char in enumerate(reversed(body)):
        value = int(char)
        if position % 2 == 0:  # doubled: every second digit from the right of the full number
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return str((10 - total % 10) % 10)


def luhn_ok(number: str) -> bool:
    return luhn_check_digit(number[:-1]) == number[-1]


def iban_check_digits(country: str, bban: str) -> str:
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    return f"{98 - int(numeric) % 97:02d}"


CN_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def cn_check_char(body: str) -> str:
    return "10X98765432"[sum(int(d) * w for d, w in zip(body, CN_WEIGHTS)) % 11]


# ---------------------------------------------------------------------------------------- positives


def digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def chars(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def grouped(value: str, sizes: list[int], sep: str) -> str:
    parts, at = [], 0
    for size in sizes:
        parts.append(value[at:at + size])
        at += size
    if at < len(value):
        parts.append(value[at:])
    return sep.join(p for p in parts if p)


CARD_BRANDS = {  # name -> (prefix choices, length)
    "visa": (["4"], 16),
    "mastercard": ([str(p) for p in range(51, 56)] + [str(p) for p in range(2221, 2721, 37)], 16),
    "amex": (["34", "37"], 15),
    "discover": (["6011", "644", "65"], 16),
    "19-digit": (["4", "62"], 19),
}


def card(rng: random.Random) -> tuple[str, str, str]:
    brand = rng.choice(list(CARD_BRANDS))
    prefixes, length = CARD_BRANDS[brand]
    prefix = rng.choice(prefixes)
    body = prefix + digits(rng, length - 1 - len(prefix))
    number = body + luhn_check_digit(body)
    style = rng.choice(["plain", "spaces", "dashes"])
    if style == "plain":
        return "", number, f"card/{brand}/{style}"
    sizes = [4, 6, 5] if brand == "amex" else [4, 4, 4, 4, 3]
    return "", grouped(number, sizes, " " if style == "spaces" else "-"), f"card/{brand}/{style}"


def bban(rng: random.Random, country: str) -> str:
    letters, alnum = string.ascii_uppercase, UPPER_ALNUM
    return {
        "GB": lambda: chars(rng, letters, 4) + digits(rng, 14),
        "DE": lambda: digits(rng, 18),
        "FR": lambda: digits(rng, 10) + chars(rng, alnum, 11) + digits(rng, 2),
        "ES": lambda: digits(rng, 20),
        "NL": lambda: chars(rng, letters, 4) + digits(rng, 10),
        "IT": lambda: chars(rng, letters, 1) + digits(rng, 10) + chars(rng, alnum, 12),
        "CH": lambda: digits(rng, 5) + chars(rng, alnum, 12),
    }[country]()


IBAN_LENGTHS = {"GB": 22, "DE": 22, "FR": 27, "ES": 24, "NL": 18, "IT": 27, "CH": 21}


def iban_compact(rng: random.Random, country: str) -> str:
    basic = bban(rng, country)
    value = country + iban_check_digits(country, basic) + basic
    assert len(value) == IBAN_LENGTHS[country], (country, value)
    return value


def iban(rng: random.Random) -> tuple[str, str, str]:
    country = rng.choice(list(IBAN_LENGTHS))
    value = iban_compact(rng, country)
    style = rng.choice(["compact", "groups"])
    if style == "groups":
        value = grouped(value, [4] * 9, " ")
    return "", value, f"iban/{country}/{style}"


def ssn(rng: random.Random) -> tuple[str, str, str]:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return "", f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}", "us_ssn"


CN_REGIONS = ["110101", "110105", "310104", "310115", "440305", "440106", "330106", "510107", "320102",
              "420111", "610113", "500103", "120101", "210102", "370202", "350203"]


def birth_date(rng: random.Random) -> str:
    start = datetime.date(1930, 1, 1).toordinal()
    return datetime.date.fromordinal(rng.randint(start, datetime.date(2012, 12, 31).toordinal())).strftime("%Y%m%d")


def cn_id(rng: random.Random) -> tuple[str, str, str]:
    body = rng.choice(CN_REGIONS) + birth_date(rng) + digits(rng, 3)
    check = cn_check_char(body)
    if check == "X" and rng.random() < 0.3:
        check = "x"
    return "", body + check, "cn_resident_id" + ("/X" if check in "Xx" else "")


FIRST = ["anna", "bob", "li.wei", "maria", "jean-luc", "o.brien", "sam", "priya", "kenji", "lucas", "zoe"]
LAST = ["smith", "garcia", "mueller", "dupont", "tanaka", "silva", "kumar", "zhang", "jones", "rossi"]
DOMAINS = ["example.com", "mail.example.org", "uni-heidelberg.de", "cs.ox.ac.uk", "example.co.jp",
           "post.example.fr", "gmail.com", "proton.me", "corp.example.io", "mx1.mail.example.com.br"]


def email(rng: random.Random) -> tuple[str, str, str]:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    local = rng.choice([first, f"{first}.{last}", f"{first}+{rng.choice(['news', 'bills', 'x1'])}",
                        f"{first}.{last}{rng.randint(1, 99)}", f"{first[0]}{last}", f"{last}_{first}",
                        f"{first}.{last}+tag"])
    domain = rng.choice(DOMAINS)
    if rng.random() < 0.2:
        local = local.capitalize()
    return "", f"{local}@{domain}", "email"


def ip(rng: random.Random) -> tuple[str, str, str]:
    style = rng.choice(["v4", "v4", "v6-full", "v6-compressed"])
    if style == "v4":
        first = rng.choice([10, 172, 192, 8, 81, 203, rng.randint(1, 223)])
        return "", ".".join(str(x) for x in [first] + [rng.randint(0, 255) for _ in range(3)]), "ip/v4"
    groups = [rng.randint(0, 0xFFFF) for _ in range(8)]
    groups[0] = rng.choice([0x2001, 0xFE80, 0x2A00, 0x2606, groups[0]])
    if style == "v6-full":
        address = ipaddress.IPv6Address(":".join(f"{g:x}" for g in groups))
        return "", address.exploded, "ip/v6-full"
    zero_from = rng.randint(1, 6)  # a run of zero groups for `::` (never the whole address)
    for i in range(zero_from, rng.randint(zero_from + 1, 8)):
        groups[i] = 0
    address = ipaddress.IPv6Address(":".join(f"{g:x}" for g in groups))
    return "", address.compressed, "ip/v6-compressed"


def url_credentials(rng: random.Random) -> tuple[str, str, str]:
    user = rng.choice(["bob", "admin", "u", "deploy", "svc_reader", "anna.smith"])
    password = rng.choice(["hunter2", "p", "s3cr3t!", chars(rng, ALNUM, rng.randint(6, 20)), "Tr0ub4dor&3"])
    scheme, host, port, path = rng.choice([
        ("https", "example.com", "", "/path"), ("https", "api.example.org", "", "/v1/items?id=3"),
        ("postgres", "db", ":5432", "/x"), ("postgresql", "db.internal", ":5432", "/prod"),
        ("mysql", "10.0.0.5", ":3306", "/shop"), ("redis", "cache.example.com", ":6379", "/0"),
        ("ftp", "files.example.net", "", "/pub/report.pdf"), ("amqp", "mq", ":5672", "/vhost"),
    ])
    return "", f"{scheme}://{user}:{password}@{host}{port}{path}", f"url_credentials/{scheme}"


def secret(rng: random.Random) -> tuple[str, str, str]:
    style = rng.choice(["sk", "ghp", "akia", "xoxb", "api_key", "password", "token"])
    if style == "sk":
        return "", "sk-" + chars(rng, ALNUM, 32), "secret/sk"
    if style == "ghp":
        return "", "ghp_" + chars(rng, ALNUM, 36), "secret/ghp"
    if style == "akia":
        return "", "AKIA" + chars(rng, UPPER_ALNUM, 16), "secret/akia"
    if style == "xoxb":
        return "", f"xoxb-{digits(rng, 12)}-{digits(rng, 13)}-{chars(rng, ALNUM, 24)}", "secret/xoxb"
    value = chars(rng, ALNUM + "_-", rng.randint(12, 40))
    lead = {"api_key": rng.choice(["api_key=", "API_KEY=", "apikey: ", "api-key = "]),
            "password": rng.choice(["password: ", "Password=", "passwd: "]),
            "token": rng.choice(["token=", "secret: "])}[style]
    return lead, value, f"secret/{style}"


PHONE_REGIONS = ["US", "GB", "DE", "FR", "IN", "CN", "BR", "JP"]
PHONE_TYPES = {"mobile": phonenumbers.PhoneNumberType.MOBILE, "fixed": phonenumbers.PhoneNumberType.FIXED_LINE}
PHONE_FORMATS = {"INTERNATIONAL": phonenumbers.PhoneNumberFormat.INTERNATIONAL,
                 "NATIONAL": phonenumbers.PhoneNumberFormat.NATIONAL,
                 "E164": phonenumbers.PhoneNumberFormat.E164}


def phone(rng: random.Random) -> tuple[str, str, str]:
    region, type_name, format_name = rng.choice(PHONE_REGIONS), rng.choice(list(PHONE_TYPES)), rng.choice(list(PHONE_FORMATS))
    example = phonenumbers.example_number_for_type(region, PHONE_TYPES[type_name])
    national = str(example.national_number)
    for _ in range(100):
        k = rng.choice([2, 3])
        number = phonenumbers.PhoneNumber(country_code=example.country_code,
                                          national_number=int(national[:-k] + digits(rng, k)))
        if phonenumbers.is_valid_number(number):
            break
    else:
        number = example
    return "", phonenumbers.format_number(number, PHONE_FORMATS[format_name]), f"phone/{region}/{type_name}/{format_name}"


GENERATORS = {"url_credentials": url_credentials, "secret": secret, "email": email, "iban": iban,
              "cn_resident_id": cn_id, "card": card, "us_ssn": ssn, "ip": ip, "phone": phone}
assert set(GENERATORS) == set(KINDS), set(KINDS) ^ set(GENERATORS)


def positive(rng: random.Random, kind: str) -> Sample:
    lead, value, family = GENERATORS[kind](rng)
    template = rng.choice(TEMPLATES)
    before = template[:template.index("{}")] + lead
    text = template.format(lead + value)
    return Sample(text, kind, len(before), len(before) + len(value), family)


# ---------------------------------------------------------------------------------------- negatives


def luhn_failing(rng: random.Random, length: int, prefix: str = "") -> str:
    body = prefix + digits(rng, length - 1 - len(prefix))
    good = luhn_check_digit(body)
    return body + rng.choice([d for d in string.digits if d != good])


def neg_price(rng):
    return rng.choice(["The laptop costs ${:,}.{:02d} before tax.", "Total: €{:,}.{:02d} incl. VAT",
                       "I paid £{:,}.{:02d} for two tickets", "Price dropped to ${:,}.{:02d} today"]).format(
        rng.randint(1, 250_000), rng.randint(0, 99))


def neg_date(rng):
    d = datetime.date(2024, 1, 1) + datetime.timedelta(days=rng.randint(-4000, 1000))
    return rng.choice([f"The meeting moved to {d.isoformat()}.", f"Invoice dated {d:%d/%m/%Y}, due in 30 days",
                       f"Born {d:%d.%m.%Y} in a small town", f"Deadline {d:%m/%d/%Y} at noon",
                       f"log rotated on {d:%Y%m%d}"])


def neg_time(rng):
    t = f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"
    return rng.choice([f"The train leaves at {t} sharp.", f"[{t}] worker started", f"elapsed {t}, 3 retries",
                       f"alarm set for {t[:5]} tomorrow"])


def neg_version(rng):
    return rng.choice([f"Upgrade to v{rng.randint(0, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 40)} first",
                       f"Windows build 10.0.{rng.randint(10000, 22631)} is installed",
                       f"python {rng.choice([3])}.{rng.randint(8, 13)}.{rng.randint(0, 12)} on linux",
                       f"firmware 2.{rng.randint(0, 9)}.{rng.randint(0, 99)}.{rng.randint(100, 9999)} released",
                       f"torch=={rng.randint(1, 2)}.{rng.randint(0, 5)}.{rng.randint(0, 3)}"])


def neg_order_bad_luhn(rng):
    number = luhn_failing(rng, 16, rng.choice(["4", "51", "6011", "37"]))
    return rng.choice([f"Order #{grouped(number, [4, 4, 4, 4], ' ')} has shipped",
                       f"order number {grouped(number, [4, 4, 4, 4], '-')}, keep it",
                       f"Your order {number} is on its way"])


def neg_16_digits(rng):
    number = luhn_failing(rng, 16)
    return rng.choice([f"tracking id {number}", f"The batch {number} failed validation",
                       f"serial: {number}"])


def neg_iban_bad_check(rng):
    country = rng.choice(list(IBAN_LENGTHS))
    value = iban_compact(rng, country)
    wrong = rng.choice([f"{c:02d}" for c in range(2, 99) if f"{c:02d}" != value[2:4]])
    value = value[:2] + wrong + value[4:]
    if rng.random() < 0.5:
        value = grouped(value, [4] * 9, " ")
    return rng.choice([f"IBAN {value} (check digits wrong)", f"the account {value} was rejected",
                       f"typo in {value}, please resend"])


def neg_ssn_bad_area(rng):
    area = rng.choice(["000", "666", f"9{rng.randint(0, 99):02d}"])
    return rng.choice([f"SSN {area}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d} is not issued",
                       f"the form says {area}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"])


def cn_negative(rng, bad_date: bool) -> str:
    for _ in range(1000):
        if bad_date:
            date = rng.choice(["19491331", "20000230", "19990431", "20011100", "18000000", "19851232"])
        else:
            date = birth_date(rng)
        body = rng.choice(CN_REGIONS) + date + digits(rng, 3)
        good = cn_check_char(body)
        check = good if bad_date else rng.choice([c for c in "0123456789X" if c != good])
        run = body + check if check != "X" else body  # the digit run a card recognizer would see
        if not luhn_ok(run):
            return body + check
    raise RuntimeError("no Luhn-failing 18-digit number found")


def neg_cn_bad_check(rng):
    return rng.choice(["id {} on file", "ID number: {}", "record {} was archived"]).format(cn_negative(rng, False))


def neg_cn_bad_date(rng):
    return rng.choice(["id {} on file", "ID number: {}", "record {} was archived"]).format(cn_negative(rng, True))


SHAPES, COLORS = ["circle", "triangle", "rectangle", "square"], ["red", "green", "blue", "yellow", "gray", "teal"]


def neg_count(rng):
    return rng.choice([f"there are {rng.randint(2, 12)} {rng.choice(SHAPES)}s in the image",
                       f"{rng.randint(2, 9)} circles and {rng.randint(2, 9)} squares",
                       f"we trained for {rng.randint(2, 40)} epochs on {rng.randint(1000, 99999)} images",
                       f"accuracy went from {rng.randint(50, 80)}.{rng.randint(0, 9)}% to {rng.randint(81, 99)}.{rng.randint(0, 9)}%",
                       f"page {rng.randint(1, 400)} of {rng.randint(400, 900)}"])


def neg_vqa(rng):
    return rng.choice([f"what color is the {rng.choice(SHAPES)}?", "what shape is in the image?",
                       f"is there a {rng.choice(COLORS)} shape in the image?",
                       f"is the {rng.choice(SHAPES)} {rng.choice(COLORS)}?",
                       f"how many {rng.choice(COLORS)} shapes are there?",
                       f"is there a {rng.choice(SHAPES)} to the left of the {rng.choice(SHAPES)}?"])


NEGATIVES = {"price": neg_price, "date": neg_date, "time": neg_time, "version": neg_version,
             "order, bad Luhn": neg_order_bad_luhn, "16 digits, bad Luhn": neg_16_digits,
             "IBAN, bad check": neg_iban_bad_check, "SSN, bad area": neg_ssn_bad_area,
             "CN id, bad check": neg_cn_bad_check, "CN id, bad date": neg_cn_bad_date,
             "count": neg_count, "easy-VQA question": neg_vqa}


def build_set(seed: int, per_kind: int, negatives: int) -> list[Sample]:
    rng = random.Random(seed)
    samples = [positive(rng, kind) for kind in KINDS for _ in range(per_kind)]
    families = list(NEGATIVES)
    for i in range(negatives):
        family = families[i % len(families)]
        samples.append(Sample(NEGATIVES[family](rng), "negative", family=f"negative/{family}"))
    return samples


# ---------------------------------------------------------------------------------------- scoring


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-kind", type=int, default=180, help="positive strings per kind")
    parser.add_argument("--negatives", type=int, default=400, help="negative strings")
    parser.add_argument("--show-misses", type=int, default=0, metavar="N",
                        help="print up to N missed positives and N false positives per kind")
    parser.add_argument("--presidio", action="store_true",
                        help="Presidio's analyzer too (pip install 'mmfuse[presidio]')")
    parser.add_argument("--spacy-model", metavar="PATH",
                        help="with --presidio: a spaCy pipeline (default: blank English)")
    args = parser.parse_args()

    samples = build_set(args.seed, args.per_kind, args.negatives)
    extra = None
    if args.presidio:  # built before the clock starts (importing Presidio and spaCy takes seconds)
        from mmfuse.privacy.presidio import PresidioFinder

        extra = PresidioFinder(args.spacy_model)
    masker = PiiMasker(extra=extra)
    tic = time.perf_counter()
    for sample in samples:
        masker.mask(sample.text)
    seconds = time.perf_counter() - tic

    positives, recalled = Counter(), Counter()
    correct, claimed, negative_fp = Counter(), Counter(), Counter()
    claimed_by_other: dict[str, Counter] = defaultdict(Counter)
    misses, false_positives = defaultdict(list), defaultdict(list)
    negatives_by_family: dict[str, list] = defaultdict(lambda: [0, 0, Counter()])
    for sample in samples:
        spans = masker.spans(sample.text)
        if sample.kind == "negative":
            row = negatives_by_family[sample.family.split("/", 1)[1]]
            row[0] += 1
            row[1] += bool(spans)
            for start, end, kind in spans:
                claimed[kind] += 1
                negative_fp[kind] += 1
                row[2][kind] += 1
                false_positives[kind].append((sample, start, end))
            continue
        positives[sample.kind] += 1
        hit = False
        for start, end, kind in spans:
            claimed[kind] += 1
            covers = start <= sample.start and end >= sample.end
            if kind == sample.kind and covers and not hit:
                hit = True
                correct[kind] += 1
            else:
                false_positives[kind].append((sample, start, end))
                if start < sample.end and sample.start < end and kind != sample.kind:
                    claimed_by_other[sample.kind][kind] += 1
        if hit:
            recalled[sample.kind] += 1
        else:
            misses[sample.kind].append((sample, spans))

    n_pos, n_neg = sum(positives.values()), len(samples) - sum(positives.values())
    print(f"## Personal-data masking: {len(samples)} strings ({n_pos} positives, {n_neg} negatives), seed {args.seed}")
    print()
    print("| kind | positives | recall | precision | false positives on negatives |")
    print("|---|---:|---:|---:|---:|")

    def pct(a: int, b: int) -> str:
        return f"{a / b:.3f}" if b else "–"

    all_kinds = [*KINDS, *sorted(set(claimed) - set(KINDS))]  # then those only Presidio names
    for kind in all_kinds:
        print(f"| {kind} | {positives[kind]} | {pct(recalled[kind], positives[kind])} | "
              f"{pct(correct[kind], claimed[kind])} | {negative_fp[kind]} |")
    print(f"| **all** | {n_pos} | {pct(sum(recalled.values()), n_pos)} | "
          f"{pct(sum(correct.values()), sum(claimed.values()))} | {sum(negative_fp.values())} |")
    print()
    if claimed_by_other:
        print("Positives claimed (overlapped) by a span of another kind:")
        print()
        print("| kind | claimed by | strings |")
        print("|---|---|---:|")
        for kind in KINDS:
            for other, n in claimed_by_other[kind].most_common():
                print(f"| {kind} | {other} | {n} |")
        print()
    print("| negative family | strings | strings with a span | spans by kind |")
    print("|---|---:|---:|---|")
    for family in NEGATIVES:
        n, flagged, kinds = negatives_by_family[family]
        print(f"| {family} | {n} | {flagged} | {', '.join(f'{k} {c}' for k, c in kinds.most_common()) or '–'} |")
    print()
    print(f"Masking: {seconds:.2f} s wall for {len(samples)} strings, {len(samples) / seconds:,.0f} strings/s "
          f"(PiiMasker.mask, phone regions {', '.join(masker.regions)}"
          f"{', Presidio on ' + (args.spacy_model or 'a blank spaCy pipeline') if args.presidio else ''}).")

    if args.show_misses:
        for kind in all_kinds:
            if misses[kind]:
                print(f"\n### Missed {kind} ({len(misses[kind])}, showing {min(args.show_misses, len(misses[kind]))})")
                for sample, spans in misses[kind][:args.show_misses]:
                    found = ", ".join(f"{k} {sample.text[s:e]!r}" for s, e, k in spans) or "nothing"
                    print(f"- [{sample.family}] {sample.text!r} value {sample.text[sample.start:sample.end]!r}; found {found}")
            if false_positives[kind]:
                print(f"\n### False positives {kind} ({len(false_positives[kind])}, "
                      f"showing {min(args.show_misses, len(false_positives[kind]))})")
                for sample, start, end in false_positives[kind][:args.show_misses]:
                    print(f"- [{sample.family}] {sample.text!r} span {sample.text[start:end]!r}")


if __name__ == "__main__":
    main()
