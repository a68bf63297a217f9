from __future__ import annotations

import pytest

from synthaug.prompts import WordNotInPromptError, token_positions, words_positions


@pytest.fixture(scope="module")
def bpe_tokenizer():
    """A tiny BPE tokenizer, made offline, that splits 'triangle' into 'tri' + 'angle' (as CLIP's BPE splits words)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    letters = list("abcdefghijklmnopqrstuvwxyz")
    pieces = ["tr", "tri", "an", "ang", "angl", "angle", "re", "red"]
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", *letters, *pieces])}
    merges = [("t", "r"), ("tr", "i"), ("a", "n"), ("an", "g"), ("ang", "l"), ("angl", "e"), ("r", "e"), ("re", "d")]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=16,
    )


def test_word_split_into_several_tokens(bpe_tokenizer):
    prompt = "a red triangle"
    ids = bpe_tokenizer(prompt)["input_ids"]
    pos = token_positions(bpe_tokenizer, prompt, "triangle")
    assert len(pos) == 2  # 'tri' + 'angle'
    assert bpe_tokenizer.convert_ids_to_tokens([ids[p] for p in pos]) == ["tri", "angle"]
    assert token_positions(bpe_tokenizer, prompt, "red") == [2]
    assert words_positions(bpe_tokenizer, prompt, ["red", "triangle"]) == [2, *pos]


def test_whole_words_only_and_occurrences():
    from synthaug.toy.model import build_tokenizer

    tok = build_tokenizer()
    prompt = "a red circle and a blue circle on plain"
    assert token_positions(tok, prompt, "circle") == [3, 7]
    assert token_positions(tok, prompt, "circle", occurrence=1) == [7]
    assert token_positions(tok, prompt, "blue circle") == [6, 7]
    with pytest.raises(WordNotInPromptError, match="'square' is not in the prompt"):
        token_positions(tok, prompt, "square")
    with pytest.raises(WordNotInPromptError, match="has 2 occurrence"):
        token_positions(tok, prompt, "circle", occurrence=2)
    with pytest.raises(WordNotInPromptError, match="not in the prompt"):
        token_positions(tok, "a red circles", "circle")


def test_word_cut_off_by_truncation():
    from synthaug.toy.model import build_tokenizer

    tok = build_tokenizer()
    prompt = " ".join(["a"] * 30) + " circle"
    with pytest.raises(WordNotInPromptError, match="shorten the prompt"):
        token_positions(tok, prompt, "circle")
