"""The words a model's training texts use in each place (mmfuse.word_substitutes): what is kept,
what never reaches the model directory, and how it is read back."""
from __future__ import annotations

import pytest

from mmfuse.word_substitutes import MAX_PER_PLACE, MIN_ROWS, WordSubstitutes


def test_words_used_often_enough_in_a_place_are_its_alternatives():
    texts = (["is there a red shape?"] * MIN_ROWS + ["is there a blue shape?"] * (MIN_ROWS + 2)
             + ["is there a green shape?"] * (MIN_ROWS - 1))  # one row short: not kept
    substitutes = WordSubstitutes.fit(texts)
    words = "is there a red shape?".split()
    assert substitutes.alternatives(words, 3) == ["blue"]  # never the word itself; green too rare
    assert substitutes.places["a\tshape?"] == ["blue", "red"]  # most used first
    # Every other place holds one word only: no alternative, so not kept at all.
    assert list(substitutes.places) == ["a\tshape?"]
    assert substitutes.alternatives(words, 0) == []


def test_a_rare_word_never_reaches_the_table():
    texts = ["call me at home"] * 10 + ["call jane at home"] * 2 + ["call bob at home"] * 8
    places = WordSubstitutes.fit(texts).places
    assert places == {"call\tat": ["me", "bob"]}
    assert "jane" not in repr(places)


def test_at_most_the_most_used_words_of_a_place_are_kept():
    texts = [f"a w{i} b" for i in range(MAX_PER_PLACE + 5) for _ in range(MIN_ROWS + i)]
    kept = WordSubstitutes.fit(texts).places["a\tb"]
    assert len(kept) == MAX_PER_PLACE and kept[0] == f"w{MAX_PER_PLACE + 4}" and "w0" not in kept


def test_the_ends_of_a_text_are_places_too():
    substitutes = WordSubstitutes.fit(["red?"] * MIN_ROWS + ["blue?"] * MIN_ROWS)
    assert substitutes.alternatives(["red?"], 0) == ["blue?"]


@pytest.mark.parametrize("saved", [[], {"a\tb": "red"}, {"a\tb": [1, 2]}, "text"])
def test_a_damaged_table_is_refused(saved):
    with pytest.raises(ValueError, match="place -> list of words"):
        WordSubstitutes.from_dict(saved)
