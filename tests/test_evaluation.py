import math

import pytest
import torch
import torch.nn.functional as F

from attnlab.errors import UserError
from attnlab.evaluation import classification_metrics, format_confusion, perplexity, text_metrics
from attnlab.evaluation.seq2seq import UnicodeWords
from attnlab.models import GPTConfig, build_model
from attnlab.tokenizers import CharTokenizer

TEXT = "the quick brown fox jumps over the lazy dog. " * 6


@pytest.fixture
def model_and_tokenizer():
    tokenizer = CharTokenizer.train(TEXT)
    model = build_model(GPTConfig(vocab_size=tokenizer.vocab_size, max_seq_len=32, n_layer=1, n_head=2, d_model=16))
    return model.eval(), tokenizer


def direct_nll(model, ids):
    """Summed next-token NLL of one window scored from its first token."""
    logits = model(ids[None]).logits[0, :-1]
    return F.cross_entropy(logits, ids[1:], reduction="sum").item()


def test_a_text_within_one_window_is_scored_exactly(model_and_tokenizer):
    model, tok = model_and_tokenizer
    text = TEXT[:30]
    ids = torch.tensor(tok.encode(text))
    scores = perplexity(model, tok, text)
    assert scores["tokens"] == 29
    assert scores["loss"] == pytest.approx(direct_nll(model, ids) / 29, rel=1e-5)
    assert scores["perplexity"] == pytest.approx(math.exp(scores["loss"]), rel=1e-6)
    assert scores["bits_per_token"] == pytest.approx(scores["loss"] / math.log(2), rel=1e-6)


def test_windows_with_the_largest_stride_overlap_by_one_token(model_and_tokenizer):
    model, tok = model_and_tokenizer
    text = TEXT[:94]  # windows [0, 32), [31, 63), [62, 94): each scores all but its first token
    ids = torch.tensor(tok.encode(text))
    expected = sum(direct_nll(model, ids[s:s + 32]) for s in (0, 31, 62)) / 93
    for stride in (31, 32, 1000):  # a stride past max_seq_len - 1 would skip tokens; it is clamped
        scores = perplexity(model, tok, text, stride=stride)
        assert scores["tokens"] == 93 and scores["loss"] == pytest.approx(expected, rel=1e-5)


def test_sliding_windows_cover_each_token_once_with_context(model_and_tokenizer):
    model, tok = model_and_tokenizer
    for stride in (1, 5, 16, 32):
        assert perplexity(model, tok, TEXT, stride=stride)["tokens"] == len(TEXT) - 1


def test_too_short_text_is_refused(model_and_tokenizer):
    model, tok = model_and_tokenizer
    with pytest.raises(UserError, match="at least two tokens"):
        perplexity(model, tok, "t")


# -- ROUGE on any script ------------------------------------------------------------------------

ROUGE = ("rouge1", "rouge2", "rougeL")


def test_identical_cyrillic_texts_score_full_rouge():
    text = "Кошка сидит на ковре, а собака спит."
    scores = text_metrics([text], [text])
    assert all(scores[name] == pytest.approx(100.0) for name in ROUGE)


def test_partly_matching_cyrillic_texts_score_the_f1_counted_by_hand():
    # hypothesis: кошка сидит на ковре (4 words); reference: кошка спит на ковре дома (5 words)
    scores = text_metrics(["Кошка сидит на ковре."], ["кошка спит на ковре дома"])
    f1 = lambda p, r: 2 * p * r / (p + r)  # noqa: E731
    assert scores["rouge1"] == pytest.approx(100 * f1(3 / 4, 3 / 5))  # кошка, на, ковре: 2/3
    assert scores["rouge2"] == pytest.approx(100 * f1(1 / 3, 1 / 4))  # "на ковре": 2/7
    assert scores["rougeL"] == pytest.approx(100 * f1(3 / 4, 3 / 5))  # LCS кошка на ковре


def test_unicode_words_keep_accents_and_combining_marks():
    words = UnicodeWords()
    assert words.tokenize("Über u\u0308ber Ελληνικά") == ["über", "über", "ελληνικά"]
    assert words.tokenize("हिन्दी भाषा") == ["हिन्दी", "भाषा"]  # vowel signs and virama stay in the word


@pytest.mark.parametrize("hypothesis, reference", [
    ("The cat sat on the mat.", "the cat is sitting on the mat"),
    ("Don't stop-believing: it's 3.14, not 2_718!", "don't stop believing; it is 3.14 and 2.718"),
    ("A quick brown fox jumps over the lazy dog", "THE QUICK BROWN FOX JUMPED OVER A LAZY DOG!!"),
    ("running runs ran", "the runner runs"),  # no stemming, as before
])
def test_english_scores_are_rouge_scores_default(hypothesis, reference):
    from rouge_score import rouge_scorer

    default = rouge_scorer.RougeScorer(list(ROUGE)).score(reference, hypothesis)
    scores = text_metrics([hypothesis], [reference])
    assert all(scores[name] == 100 * default[name].fmeasure for name in ROUGE)
    assert 0 < scores["rouge1"] < 100


def test_scoring_reports_its_progress_off_a_terminal_in_plain_lines_and_is_silent_when_quiet(
        model_and_tokenizer, capsys, monkeypatch):
    import attnlab.progress

    monkeypatch.setattr(attnlab.progress, "LINE_EVERY_S", 0.0)
    model, tok = model_and_tokenizer
    perplexity(model, tok, TEXT)
    lines = capsys.readouterr().err.splitlines()
    assert lines and lines[-1].startswith(f"scoring: {len(TEXT) - 1}/{len(TEXT) - 1} tok (100%)")
    assert "\r" not in "".join(lines)  # no bar redrawn in a log file
    perplexity(model, tok, TEXT, quiet=True)
    assert capsys.readouterr().err == ""


def test_the_confusion_matrix_keeps_long_labels_apart_and_aligned():
    names = ["World", "Sci/Tech", "a very long label name"]
    lines = format_confusion(classification_metrics([0, 1, 2, 2], [0, 1, 2, 1], names)).splitlines()
    header = lines[0]
    assert len({len(line) for line in lines}) == 1  # one width: every column lines up
    for name in names:  # each label stands apart from its neighbours in the header
        assert f"  {name}" in header
    ends = [header.index(name) + len(name) for name in names]
    for line in lines[1:]:  # counts end where their column's label ends
        assert all(line[end - 1].isdigit() for end in ends)
