"""Microsoft Presidio's analyzer as one more source of spans for PiiMasker (`privacy.presidio`).

It adds the kinds mmfuse has no recognizer for: those of its pattern recognizers (URLs, dates,
UUIDs, MAC addresses, crypto wallets, NHS numbers, ...) and, only with a spaCy pipeline the user gives
(`privacy.spacy_model`), that pipeline's named entities (PERSON -> [PERSON], GPE -> [LOCATION], ...).
Each entity's kind is its Presidio name lower-cased. Its recognizers for the kinds mmfuse checks
itself are left out (see OURS); its spans come after ours, so where both claim text ours win.

Presidio left to itself downloads en_core_web_lg when it starts. Here it always gets a pipeline
already loaded (spacy.blank("en"), or the given one), so nothing is ever downloaded.
"""
from __future__ import annotations

import logging
import threading
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from ..errors import ConfigError, brief

# Presidio's recognizers for kinds mmfuse recognizes itself, with checksums or numbering plans
# Presidio lacks (it takes SSNs in the never-issued area 9xx; bench/pii.py): they would
# add only false positives. Its e-mail one would also fetch the public suffix list from the
# internet (tldextract) the first time it is used.
OURS = ("EmailRecognizer", "CreditCardRecognizer", "IbanRecognizer", "IpRecognizer", "PhoneRecognizer",
        "UsSsnRecognizer")

# Presidio scores each finding in [0, 1]: bare patterns low (a "US bank number" is any 8 to 17
# digits, 0.05; a driver licence 0.01 to 0.3; a passport number 0.05 to 0.1), checked or specific
# ones high (an NHS number with its check digit 1.0, a date, URL or UUID 0.5 to 0.6, a spaCy
# entity 0.85). Below this, a finding is more often an ordinary number than personal data.
SCORE_THRESHOLD = 0.5

# Presidio's own spaCy settings (its conf/default.yaml): which spaCy labels are which entity, and
# which labels are not personal data (organisations: too many false positives, its authors say).
NER = {"model_to_presidio_entity_mapping": {"PER": "PERSON", "PERSON": "PERSON", "NORP": "NRP", "FAC": "LOCATION",
                                            "LOC": "LOCATION", "GPE": "LOCATION", "LOCATION": "LOCATION",
                                            "DATE": "DATE_TIME", "TIME": "DATE_TIME"},
       "labels_to_ignore": ["ORG", "ORGANIZATION", "CARDINAL", "EVENT", "LANGUAGE", "LAW", "MONEY", "ORDINAL",
                            "PERCENT", "PRODUCT", "QUANTITY", "WORK_OF_ART"]}

# spaCy does not promise that one pipeline may be called from several threads at once (its
# tokenizer keeps a cache), and the server masks requests on several.
_LOCK = threading.Lock()


class PresidioFinder:
    """(start, end, kind) spans of Presidio's analyzer, best score first."""

    def __init__(self, spacy_model: str | None = None):
        self.analyzer = analyzer(spacy_model)

    def find(self, text: str) -> Iterator[tuple[int, int, str]]:
        with _LOCK:
            results = self.analyzer.analyze(text, language="en", score_threshold=SCORE_THRESHOLD)
        for result in sorted(results, key=lambda r: (-r.score, r.start)):
            yield result.start, result.end, result.entity_type.lower()


@lru_cache(maxsize=4)
def analyzer(spacy_model: str | None):
    """Presidio's AnalyzerEngine on a blank English pipeline or the given one; built once per model
    (loading a pipeline takes seconds, and the server builds a masker per request)."""
    try:
        import spacy
        from presidio_analyzer import AnalyzerEngine
        from presidio_analyzer.nlp_engine import NerModelConfiguration, SpacyNlpEngine
    except ImportError:
        raise ConfigError("privacy.presidio: Presidio is not installed: pip install 'mmfuse[presidio]'") from None

    class Loaded(SpacyNlpEngine):
        """Presidio's spaCy engine on a pipeline loaded here: its own load() downloads a model it
        does not find installed. Registered as "en", the one language Presidio's recognizers are
        set up for (its patterns do not depend on the pipeline's language)."""

        def __init__(self, nlp):
            super().__init__(models=[{"lang_code": "en", "model_name": spacy_model or "blank:en"}],
                             ner_model_configuration=NerModelConfiguration(**NER))
            self.nlp = {"en": nlp}

        def load(self) -> None:
            pass

    # Its warnings are about its own set-up, not the user's data: recognizers for languages other
    # than English left out (a dozen lines at start), a spaCy label it has no name for (on every text).
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    nlp = spacy.blank("en") if spacy_model is None else load_pipeline(spacy, spacy_model)
    engine = AnalyzerEngine(nlp_engine=Loaded(nlp), supported_languages=["en"])
    for name in OURS:
        engine.registry.remove_recognizer(name)
    return engine


def load_pipeline(spacy, name: str):
    """A spaCy pipeline folder (as nlp.to_disk writes it) or an installed pipeline package; never a download."""
    folder = Path(name).expanduser()
    if not folder.exists() and not spacy.util.is_package(name):
        raise ConfigError(f"privacy.spacy_model: {name} does not exist (give the folder of a spaCy pipeline, "
                          "as nlp.to_disk writes it)")
    if folder.exists() and not (folder / "config.cfg").is_file():
        raise ConfigError(f"privacy.spacy_model: {name} is not a spaCy pipeline (it has no config.cfg)")
    try:
        return spacy.load(folder if folder.exists() else name)
    except Exception as error:  # a broken or incompatible pipeline: say which, in one line
        raise ConfigError(f"privacy.spacy_model: spaCy could not load {name}: {brief(error)}") from None
