"""The words a model's training texts use in each place: the edits a counterfactual word
explanation tries (mmfuse.explain.word_counterfactuals).

Deleting a word (occlusion) or blanking it (a [PAD] baseline) asks the model about a text it never
saw in training, and its answer to such a text says little about the word. Replacing the word by
one the training texts use between the same two neighbours ("is there a red shape?" -> "... a blue
shape?") keeps the text in the distribution the model learned, and shows what the word decides.

A place is (previous word, next word), with "" at either end of the text. Only words that at least
MIN_ROWS training rows use in that place are kept, at most MAX_PER_PLACE per place (the most
used), so a rare word (a name, a number, an id) never reaches the model directory.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable

MIN_ROWS = 5
MAX_PER_PLACE = 12
SEPARATOR = "\t"  # between the two neighbours in the JSON key; whitespace never is part of a word


def _place(words: list[str], i: int) -> str:
    return (words[i - 1] if i else "") + SEPARATOR + (words[i + 1] if i + 1 < len(words) else "")


@dataclass
class WordSubstitutes:
    places: dict[str, list[str]] = field(default_factory=dict)  # place -> words, most used first

    @classmethod
    def fit(cls, texts: Iterable[str]) -> "WordSubstitutes":
        counts: dict[str, Counter] = defaultdict(Counter)
        for text, rows in Counter(texts).items():  # a table repeats its texts: count each once
            words = text.split()
            for i, word in enumerate(words):
                counts[_place(words, i)][word] += rows
        places = {}
        for place, used in counts.items():
            common = [word for word, rows in used.most_common(MAX_PER_PLACE) if rows >= MIN_ROWS]
            if len(common) > 1:  # one word alone in its place offers no alternative
                places[place] = common
        return cls(places)

    def alternatives(self, words: list[str], i: int) -> list[str]:
        """The other words the training texts use in place of words[i]."""
        return [w for w in self.places.get(_place(words, i), ()) if w != words[i]]

    @classmethod
    def from_dict(cls, places: object) -> "WordSubstitutes":
        """From `places` as saved (JSON); anything else is a ValueError."""
        if not isinstance(places, dict) or not all(
                isinstance(k, str) and isinstance(v, list) and all(isinstance(w, str) for w in v)
                for k, v in places.items()):
            raise ValueError("expected an object of place -> list of words")
        return cls(places)
