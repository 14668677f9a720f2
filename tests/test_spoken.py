"""easy_vqa_spoken: easy-VQA questions spoken by espeak-ng, with voices held out of training."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("soundfile")
pytest.importorskip("soxr")

from mmfuse.data import datasets, spoken  # noqa: E402
from mmfuse.data.audio_media import open_audio  # noqa: E402
from mmfuse.errors import DataError  # noqa: E402

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")

QUESTIONS = {"is there a red shape?": ["yes", "no"], "what color is the shape?": ["red", "blue"],
             "does the image contain a circle?": ["no", "yes"]}


def tiny_easy_vqa() -> pd.DataFrame:
    """20 rows, 3 distinct questions: 12 train, 8 test."""
    rows = []
    for i in range(20):
        question = list(QUESTIONS)[i % 3]
        rows.append({"image": f"/data/{i}.png", "question": question, "answer": QUESTIONS[question][i % 2],
                     "split": "train" if i < 12 else "test"})
    return pd.DataFrame(rows)


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(datasets, "_load_easy_vqa", tiny_easy_vqa)
    # Only 2 heard + 2 unheard variants are synthesised, to keep the test fast.
    variants = spoken.voice_variants()
    few = [v for v in variants if v.heard][:2] + [v for v in variants if not v.heard][:2]
    monkeypatch.setattr(spoken, "voice_variants", lambda seed=spoken.SEED: few)
    return few


def test_variants_hold_out_whole_accents_and_timbres():
    variants = spoken.voice_variants()
    assert len(variants) == 62 and len({v.name for v in variants}) == 62
    heard = [v for v in variants if v.heard]
    unheard = [v for v in variants if not v.heard]
    assert len(unheard) == 4
    # Held out in kind, not only in speed/pitch: no heard variant shares an accent or a timbre.
    assert not {v.accent for v in unheard} & {v.accent for v in heard}
    assert not {v.timbre for v in unheard} & {v.timbre for v in heard}
    assert len({v.accent for v in unheard}) == 2
    assert all(130 <= v.speed <= 190 and 30 <= v.pitch <= 70 for v in variants)
    assert spoken.voice_variants() == variants  # seeded
    assert spoken.voice_variants(seed=1) != variants


def test_builtin_columns():
    assert datasets.builtin_columns("easy_vqa_spoken") == {
        "image": "image", "audio": "audio", "text": "question", "label": "answer", "split": "split"}


@needs_espeak
def test_spoken_table(tmp_path, tiny):
    table = spoken.load_easy_vqa_spoken(tmp_path)
    assert list(table.columns) == ["image", "audio", "question", "answer", "split", "voice", "voice_heard"]
    original = tiny_easy_vqa()
    assert table[["image", "question", "answer", "split"]].equals(original)
    names = {v.name: v for v in tiny}
    assert set(table["voice"]) <= set(names)
    assert (table["voice_heard"] == [("yes" if names[v].heard else "no") for v in table["voice"]]).all()
    train = table[table["split"] == "train"]
    assert (train["voice_heard"] == "yes").all()
    assert (table.loc[table["split"] == "test", "voice_heard"] == "no").any()

    for path in table["audio"].unique():
        audio = open_audio(path, sample_rate=16_000)
        assert audio.dtype == np.float32 and audio.ndim == 1
        assert 0.5 <= len(audio) / 16_000 <= 6.0
        assert np.abs(audio).max() > 0.05  # not silence

    # Every (question, variant) clip exists; different variants of one question differ.
    folder = spoken.cache_folder(tmp_path)
    clips = {v.name: spoken.clip_path(folder, v, "is there a red shape?").read_bytes() for v in tiny}
    assert len(set(clips.values())) == len(tiny)


@needs_espeak
def test_cached_clips_are_reused_without_espeak(tmp_path, tiny, monkeypatch):
    first = spoken.load_easy_vqa_spoken(tmp_path)
    stamps = {p: (os.stat(p).st_mtime_ns, open(p, "rb").read()) for p in first["audio"]}
    monkeypatch.setattr(shutil, "which", lambda name: None)  # a filled cache needs no espeak-ng
    second = spoken.load_easy_vqa_spoken(tmp_path)
    assert second.equals(first)
    for path, (mtime, data) in stamps.items():
        assert os.stat(path).st_mtime_ns == mtime
        assert open(path, "rb").read() == data


@needs_espeak
def test_a_missing_clip_is_resynthesised_identically(tmp_path, tiny):
    table = spoken.load_easy_vqa_spoken(tmp_path)
    path = table["audio"].iloc[0]
    with open(path, "rb") as handle:
        data = handle.read()
    os.unlink(path)
    spoken.load_easy_vqa_spoken(tmp_path)
    with open(path, "rb") as handle:
        assert handle.read() == data  # espeak-ng and soxr are deterministic
    assert not list(spoken.cache_folder(tmp_path).rglob("*.tmp"))  # written atomically


def test_missing_espeak_says_how_to_get_it(tmp_path, tiny, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(DataError) as info:
        spoken.load_easy_vqa_spoken(tmp_path)
    assert str(info.value) == ("easy_vqa_spoken needs Debian's espeak-ng to synthesise its speech: "
                               "apt-get install espeak-ng (macOS: brew install espeak-ng)")
