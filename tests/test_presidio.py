"""privacy.presidio: Microsoft Presidio's analyzer after mmfuse's recognizers, on a blank spaCy
pipeline or on one the user gives (privacy.spacy_model), never on a downloaded one. Real Presidio
and spaCy, offline: any attempt to reach the network or to download a spaCy model fails the test."""
from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

pytest.importorskip("presidio_analyzer", reason="the presidio extra: pip install 'mmfuse[presidio]'")
spacy = pytest.importorskip("spacy")

from conftest import make_shapes_table, tiny_config  # noqa: E402
from mmfuse import Predictor  # noqa: E402
from mmfuse.config import PrivacyConfig, parse_config  # noqa: E402
from mmfuse.errors import ConfigError  # noqa: E402
from mmfuse.privacy import masker_for  # noqa: E402
from mmfuse.privacy.presidio import analyzer  # noqa: E402

NAMES = ["Jane Doe", "Ivan Petrov", "Quinn Zabrowski"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Every network attempt and spaCy model download recorded and refused; the analyzer built
    afresh inside the test (it is cached per spaCy model)."""
    attempts: list[str] = []

    def refuse(what):
        def refused(*args, **kwargs):
            attempts.append(what)
            raise OSError(f"offline test: {what}")
        return refused

    monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    monkeypatch.setattr(spacy.cli, "download", refuse("spacy.cli.download"))
    analyzer.cache_clear()
    yield attempts
    analyzer.cache_clear()
    assert attempts == []


@pytest.fixture(scope="module")
def names_pipeline(tmp_path_factory) -> Path:
    """A spaCy pipeline as a user would give one: blank English plus an entity ruler that knows NAMES."""
    nlp = spacy.blank("en")
    nlp.add_pipe("entity_ruler").add_patterns([{"label": "PERSON", "pattern": name} for name in NAMES])
    folder = tmp_path_factory.mktemp("names_pipeline")
    nlp.to_disk(folder)
    return folder


def test_blank_pipeline_masks_patterns_but_no_names():
    masker = masker_for(PrivacyConfig(mask_pii=True, presidio=True))
    text = ("Jane Doe: mail jane.doe@example.org, card 4111 1111 1111 1111, IBAN GB82WEST12345698765432, "
            "see https://example.org/x")
    assert masker.mask(text) == "Jane Doe: mail [EMAIL], card [CARD], IBAN [IBAN], see [URL]"
    assert dict(masker.counts) == {"email": 1, "card": 1, "iban": 1, "url": 1}
    engine = masker.extra.analyzer
    nlp = engine.nlp_engine.nlp["en"]
    assert nlp.pipe_names == [] and nlp.lang == "en"  # spacy.blank("en"): nothing loaded, nothing downloaded
    # Presidio's e-mail recognizer fetches the public suffix list (tldextract) unless a copy is cached.
    assert "EmailRecognizer" not in [r.name for r in engine.registry.recognizers]


def test_our_recognizers_keep_priority():
    """A US number is a valid NHS number to Presidio's checksum; ours claims it first as a phone."""
    masker = masker_for(PrivacyConfig(presidio=True))
    assert masker.spans("call +1 415 555 2671") == [(5, 20, "phone")]


def test_user_pipeline_masks_person_names(names_pipeline):
    masker = masker_for(PrivacyConfig(mask_pii=True, presidio=True, spacy_model=str(names_pipeline)))
    assert masker.mask("Jane Doe called +1 415 555 2671") == "[PERSON] called [PHONE]"
    assert masker.mask("ask Ivan Petrov") == "ask [PERSON]"
    assert dict(masker.counts) == {"person": 2, "phone": 1}


def test_presidio_adds_only_kinds_we_do_not_check():
    """kinds: [email] leaves cards alone, Presidio's card recognizer included. An SSN in an area
    never issued (9xx) is no SSN to ours; Presidio's SSN recognizer, which takes it, is left out."""
    masker = masker_for(PrivacyConfig(presidio=True, kinds=["email"]))
    assert masker.mask("a@example.org 4111 1111 1111 1111") == "[EMAIL] 4111 1111 1111 1111"
    assert masker_for(PrivacyConfig(presidio=True)).spans("SSN 912-12-3456") == []


@pytest.mark.parametrize("privacy, message", [
    ({"spacy_model": "models/names"},
     "privacy.spacy_model: Value error, read by Presidio only: set privacy.presidio: true"),
    ({"presidio": True, "spacy_model": "/no/such/folder"}, "privacy.spacy_model: /no/such/folder does not exist"),
])
def test_bad_config_is_one_clear_line(tmp_path, privacy, message):
    with pytest.raises(ConfigError) as error:
        masker_for(parse_config(tiny_config(tmp_path, "table.csv", privacy=privacy)).privacy)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_folder_that_is_no_spacy_pipeline(tmp_path):
    with pytest.raises(ConfigError, match=r"is not a spaCy pipeline \(it has no config.cfg\)"):
        masker_for(PrivacyConfig(presidio=True, spacy_model=str(tmp_path)))


def test_presidio_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "presidio_analyzer", None)  # import presidio_analyzer -> ImportError
    with pytest.raises(ConfigError, match=r"privacy.presidio: Presidio is not installed: "
                                          r"pip install 'mmfuse\[presidio\]'"):
        masker_for(PrivacyConfig(presidio=True))


def test_served_texts_follow_the_models_privacy(names_pipeline, tmp_path):
    from mmfuse.serve.inputs import make_row

    privacy = PrivacyConfig(mask_pii=True, presidio=True, spacy_model=str(names_pipeline))
    limits = {"max_text_chars": 10_000, "mask_pii": True, "masker": masker_for(privacy)}
    row = make_row({"text": "is Quinn Zabrowski red?"}, where="rows[0].", limits=limits, folder=tmp_path)
    assert row.values["text"] == "is [PERSON] red?"


def named(folder: Path) -> dict[str, list[str]]:
    """name -> files under `folder` whose bytes hold it, lower-cased, or one of its words (>= 4 letters)."""
    found: dict[str, list[str]] = {}
    for name in NAMES:
        pieces = {name.encode(), name.lower().encode(), *(w.lower().encode() for w in name.split() if len(w) >= 4)}
        for path in folder.rglob("*"):
            if path.is_file() and any(piece in path.read_bytes() for piece in pieces):
                found.setdefault(name, []).append(str(path.relative_to(folder)))
    return found


def test_no_name_reaches_any_file(names_pipeline, tmp_path):
    frame = make_shapes_table(tmp_path / "data" / "images")
    frame["image"] = "images/" + frame["image"]
    frame["question"] = [f"{q} asks {NAMES[i % len(NAMES)]}" for i, q in enumerate(frame["question"])]
    table = tmp_path / "data" / "table.csv"
    frame.to_csv(table, index=False)
    assert named(tmp_path / "data")  # the control: the search finds the names where they are
    config = tiny_config(tmp_path / "work", table, **{
        "privacy": {"mask_pii": True, "presidio": True, "spacy_model": str(names_pipeline)},
        "encoders.text.trainable": False})
    predictor = Predictor(config).fit()
    predictor.evaluate(report_dir=tmp_path / "work" / "run" / "report")
    predictor.save(tmp_path / "work" / "run" / "model")
    assert named(tmp_path / "work") == {}
    assert predictor.fit_summary["personal_data_masked"]["person"] > 0
    vocabulary = (tmp_path / "work" / "run" / "model" / "encoders.json").read_text()
    assert "person" in vocabulary.lower()  # the placeholder was learned
