"""`easy_vqa_spoken`: easy-VQA with every question also spoken, to test the speech modality.

Same images, questions, answers and official split as `easy_vqa`, plus an `audio` column: a
16 kHz mono WAV of the question read by espeak-ng. easy-VQA has only ~107 distinct question
strings, so a model could learn the clips by heart; what is worth measuring is whether it
understands *voices it never heard*. So the clips come in 62 voice variants — an espeak-ng
accent (en-us, en-gb, en-029, en-gb-scotland, ...) with a timbre variant (+m3, +f2, ...) at a
seeded speed (130–190 wpm) and pitch (30–70) — of which 4 are held out of training entirely:
two accents that no heard variant uses, each with two timbres that no heard variant uses. The
58 heard ones are every heard English accent with every heard timbre, and English read by ten
other languages' voices (German, French, Spanish, Hindi, ...): many voices are what teaches a
model to hear the words rather than the speaker (measured: with 12 heard variants, a model
reached 99.9% on heard voices but 78–88% on the held-out Caribbean accent).
Train rows only get heard variants; each test row gets an unheard one with probability 0.5, so
accuracy on unheard voices is measured on thousands of rows (`voice_heard == "no"`).

Speech is synthesised once per (question, variant) — ~107 × 62 ≈ 6.6k clips — into
`$MMFUSE_DATA` (default `~/.cache/mmfuse/data`, as for `shape_scenes`), in a folder named by
a version and a hash of the variant list, so changing a variant regenerates everything. Each
clip is written atomically (temporary file, then rename), so an interrupted run leaves only
complete clips and the next load synthesises just the missing ones. A filled cache needs no
espeak-ng; an empty one needs Debian's `espeak-ng` on PATH.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import random
import shutil
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError
from . import datasets
from .scenes import data_root

__all__ = ["Variant", "load_easy_vqa_spoken", "voice_variants"]

log = logging.getLogger(__name__)

VERSION = "v2"
SEED = 0
SAMPLE_RATE = 16_000
WORKERS = 2
UNHEARD_SHARE = 0.5  # probability that a test row is read by a held-out variant

# espeak-ng voices (accents) and timbre variants that ship with Debian's espeak-ng-data.
ACCENTS = ("en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-gb-x-gbclan",
           "en-gb-x-gbcwmd", "en-us-nyc")
MALE_TIMBRES = ("m1", "m2", "m3", "m4", "m5", "m6", "m7")
FEMALE_TIMBRES = ("f1", "f2", "f3", "f4", "f5")
HELD_OUT_ACCENTS = 2  # each read by one held-out male and one held-out female timbre
# Other languages' voices reading the English questions: strong accents, heard in training only.
FOREIGN_ACCENTS = ("de", "fr-fr", "es", "it", "pt-br", "nl", "pl", "hi", "sw", "ru")
SPEED = (130, 190)  # words per minute (espeak-ng -s)
PITCH = (30, 70)  # espeak-ng -p, 0–99

MISSING_ESPEAK = ("easy_vqa_spoken needs Debian's espeak-ng to synthesise its speech: "
                  "apt-get install espeak-ng (macOS: brew install espeak-ng)")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One voice: espeak-ng accent + timbre at a speed and pitch; `heard` if used in training."""

    accent: str
    timbre: str
    speed: int
    pitch: int
    heard: bool

    @property
    def name(self) -> str:
        return f"{self.accent}+{self.timbre}"

    def command(self, espeak: str) -> list[str]:
        return [espeak, "-v", self.name, "-s", str(self.speed), "-p", str(self.pitch), "--stdout"]


def voice_variants(seed: int = SEED) -> list[Variant]:
    """The 62 variants, heard ones first; the same for a given seed on every machine.

    The 4 held-out variants differ in kind from the heard ones, not only in speed or pitch:
    their accents and their timbres are both absent from training.
    """
    rng = random.Random(seed)
    accents, males, females = list(ACCENTS), list(MALE_TIMBRES), list(FEMALE_TIMBRES)
    rng.shuffle(accents)
    rng.shuffle(males)
    rng.shuffle(females)
    held_accents, heard_accents = accents[:HELD_OUT_ACCENTS], accents[HELD_OUT_ACCENTS:]
    held_males, heard_males = males[:HELD_OUT_ACCENTS], males[HELD_OUT_ACCENTS:]
    held_females, heard_females = females[:HELD_OUT_ACCENTS], females[HELD_OUT_ACCENTS:]
    heard_timbres = heard_males + heard_females
    pairs = [(accent, timbre, True) for accent in heard_accents for timbre in heard_timbres]
    pairs += [(accent, heard_timbres[i % len(heard_timbres)], True) for i, accent in enumerate(FOREIGN_ACCENTS)]
    for i, accent in enumerate(held_accents):
        pairs += [(accent, held_males[i], False), (accent, held_females[i], False)]
    return [Variant(accent, timbre, rng.randint(*SPEED), rng.randint(*PITCH), heard)
            for accent, timbre, heard in pairs]


def _variants_hash(variants: list[Variant]) -> str:
    spec = [dataclasses.asdict(v) for v in variants] + [{"sample_rate": SAMPLE_RATE}]
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]


def _question_key(question: str) -> str:
    return hashlib.sha1(question.encode("utf-8")).hexdigest()[:16]


def cache_folder(root: Path | None = None, seed: int = SEED) -> Path:
    variants = voice_variants(seed)
    return (root or data_root()) / f"easy_vqa_spoken-{VERSION}-{_variants_hash(variants)}"


def clip_path(folder: Path, variant: Variant, question: str) -> Path:
    return folder / "clips" / variant.name / f"{_question_key(question)}.wav"


def load_easy_vqa_spoken(root: Path | None = None, seed: int = SEED) -> pd.DataFrame:
    """easy-VQA (image, question, answer, split) plus audio, voice, voice_heard.

    Synthesises the clips that are not cached yet (needs espeak-ng only then).
    """
    variants = voice_variants(seed)
    folder = cache_folder(root, seed)
    table = datasets._load_easy_vqa().reset_index(drop=True)

    heard = [v for v in variants if v.heard]
    unheard = [v for v in variants if not v.heard]
    rng = np.random.default_rng(seed)
    n = len(table)
    use_unheard = (table["split"].to_numpy() == "test") & (rng.random(n) < UNHEARD_SHARE)
    pick_heard = rng.integers(0, len(heard), n)
    pick_unheard = rng.integers(0, len(unheard), n)
    chosen = [unheard[u] if flag else heard[h] for flag, h, u in zip(use_unheard, pick_heard, pick_unheard)]

    _synthesise_missing(folder, variants, sorted(set(table["question"])))

    table["audio"] = [str(clip_path(folder, v, q)) for v, q in zip(chosen, table["question"])]
    table["voice"] = [v.name for v in chosen]
    table["voice_heard"] = ["yes" if v.heard else "no" for v in chosen]
    return table[["image", "audio", "question", "answer", "split", "voice", "voice_heard"]]


def _synthesise_missing(folder: Path, variants: list[Variant], questions: list[str]) -> None:
    """Every (question, variant) clip in the cache; only the missing ones are synthesised."""
    missing = [(v, q) for v in variants for q in questions if not clip_path(folder, v, q).is_file()]
    if not missing:
        return
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise DataError(MISSING_ESPEAK)
    folder.mkdir(parents=True, exist_ok=True)
    _write_atomic(folder / "variants.json", json.dumps(
        [{"name": v.name, **dataclasses.asdict(v)} for v in variants], indent=1).encode())
    for variant in variants:
        (folder / "clips" / variant.name).mkdir(parents=True, exist_ok=True)
    total = len(missing)
    log.info("easy_vqa_spoken: synthesising %d clips with espeak-ng into %s", total, folder)
    started = time.monotonic()
    done = 0
    lock = threading.Lock()
    step = max(1, total // 10)

    def one(item: tuple[Variant, str]) -> None:
        nonlocal done
        variant, question = item
        _write_atomic(clip_path(folder, variant, question), _synthesise(espeak, variant, question))
        with lock:
            done += 1
            if done % step == 0 and done < total:
                log.info("easy_vqa_spoken: %d/%d clips (%.0f s)", done, total, time.monotonic() - started)

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        for _ in pool.map(one, missing):  # re-raises the first failure
            pass
    log.info("easy_vqa_spoken: %d clips synthesised in %.1f s", total, time.monotonic() - started)


def _synthesise(espeak: str, variant: Variant, question: str) -> bytes:
    """One clip as 16 kHz mono 16-bit WAV bytes."""
    import soundfile
    import soxr

    try:
        # Text on stdin, so nothing in it can be read as an option.
        result = subprocess.run(variant.command(espeak), input=question.encode("utf-8"),
                                capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise DataError(f"espeak-ng failed for voice {variant.name}: {error}") from None
    if result.returncode != 0 or not result.stdout:
        detail = result.stderr.decode("utf-8", errors="replace").strip().splitlines()
        raise DataError(f"espeak-ng failed for voice {variant.name} (exit {result.returncode}): "
                        f"{detail[-1] if detail else 'no audio'}")
    samples, rate = soundfile.read(io.BytesIO(result.stdout), dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
    if mono.size == 0 or not np.isfinite(mono).all():
        raise DataError(f"espeak-ng gave no usable audio for voice {variant.name}: {question!r}")
    out = io.BytesIO()
    soundfile.write(out, np.clip(mono, -1.0, 1.0), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return out.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
