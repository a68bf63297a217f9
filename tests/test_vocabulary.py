from __future__ import annotations

import pytest

from synthaug.vocabulary import ClassVocabulary

VOCAB = ClassVocabulary(
    names=("background", "cat", "dog"), palette=((0, 0, 0), (1, 2, 3), (4, 5, 6)), synonyms={"cat": ("kitten",)}
)


def test_roundtrip_and_lookup():
    again = ClassVocabulary.from_dict(VOCAB.to_dict())
    assert again == VOCAB
    assert VOCAB.id_of("dog") == 2
    assert VOCAB.foreground_ids == (1, 2)
    assert VOCAB.words_for("cat") == ("cat", "kitten")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(names=(), palette=()), "empty"),
        (dict(names=("a", "a"), palette=((0, 0, 0),) * 2, background=None), "duplicates"),
        (dict(names=("a", "b"), palette=((0, 0, 0),), background=None), "one RGB per class"),
        (dict(names=("a",), palette=((0, 0, 0),)), "background='background' is not in names"),
        (dict(names=("a",), palette=((0, 0, 0),), background=None, synonyms={"z": ("y",)}), "unknown classes"),
    ],
)
def test_bad_vocabulary_says_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClassVocabulary(**kwargs)


def test_unknown_class_lists_known():
    with pytest.raises(ValueError, match=r"unknown class 'cow'.*'background', 'cat', 'dog'"):
        VOCAB.id_of("cow")


def test_mismatch_shows_both_lists():
    with pytest.raises(ValueError) as err:
        VOCAB.check_same(["background", "dog", "cat"], what="the real dataset")
    text = str(err.value)
    assert "['background', 'cat', 'dog']" in text and "['background', 'dog', 'cat']" in text
    assert "the real dataset" in text
