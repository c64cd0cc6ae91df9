"""Curation building blocks: MinHash estimates against the true Jaccard and datasketch, LSH and
union-find, each filter rule on crafted documents (either side of its threshold), the blocklist's
word boundaries, language identification, pipeline settings."""

import math
import random
from pathlib import Path

import numpy as np
import pytest

from attnlab.data.curation import MinHasher, UnionFind, band_keys, candidate_pairs, jaccard, lsh_threshold
from attnlab.data.curation import parse_pipeline, shingle_hashes
from attnlab.data.curation.blocklist import BlocklistFilter, BlocklistSettings
from attnlab.data.curation.filters import C4Filter, C4Settings, GopherFilter, GopherSettings
from attnlab.data.curation.synthetic import NEWLINE, edit_words, join_words, word_blocks
from attnlab.errors import UserError

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


def edited_pairs(count: int, seed: int = 0):
    """(text, edited text) pairs of about 1 kB with 2 % to 40 % of the words edited."""
    rng = random.Random(seed)
    blocks = word_blocks(SHAKESPEARE.read_text(), 170)
    vocabulary = sorted({w for b in blocks[:500] for w in b} - {NEWLINE})
    pairs = []
    for i in range(count):
        words = blocks[rng.randrange(len(blocks))]
        pairs.append((join_words(words), join_words(edit_words(words, 0.02 + 0.38 * i / count, rng, vocabulary))))
    return pairs


def test_shingles_are_word_ngrams_and_jaccard_is_exact():
    a = shingle_hashes("one two three four", 2)
    b = shingle_hashes("ONE two, three five", 2)
    assert len(a) == 3 and len(b) == 3  # case and punctuation do not matter
    assert jaccard(a, b) == pytest.approx(2 / 4)
    assert len(shingle_hashes("just two", 5)) == 1 and len(shingle_hashes("  ...  ", 5)) == 0


@pytest.mark.parametrize("num_perm", [64, 256])
def test_minhash_estimates_within_three_sigma_of_true_jaccard_and_of_datasketch(num_perm):
    datasketch = pytest.importorskip("datasketch")
    hasher = MinHasher(num_perm, seed=3)
    for text, edited in edited_pairs(25):
        a, b = shingle_hashes(text, 5), shingle_hashes(edited, 5)
        true = jaccard(a, b)
        sig = hasher.signatures([a, b])
        ours = float(np.mean(sig[0] == sig[1]))
        sigma = math.sqrt(true * (1 - true) / num_perm)
        assert abs(ours - true) <= 3 * sigma + 1e-9, (true, ours)
        reference = []
        for shingles in (a, b):
            m = datasketch.MinHash(num_perm=num_perm, seed=7)
            m.update_batch([int(h).to_bytes(8, "little") for h in shingles])
            reference.append(m)
        theirs = reference[0].jaccard(reference[1])
        # two independent estimates of the same similarity: their difference has sd sqrt(2) sigma
        assert abs(ours - theirs) <= 3 * math.sqrt(2) * sigma + 1e-9, (true, ours, theirs)


def test_signatures_do_not_depend_on_batching():
    hasher = MinHasher(32)
    sets = [shingle_hashes(t, 3) for pair in edited_pairs(6) for t in pair] + [np.empty(0, np.uint64)]
    together = hasher.signatures(sets)
    apart = np.concatenate([hasher.signatures([s]) for s in sets])
    assert np.array_equal(together, apart)
    assert (together[-1] == np.iinfo(np.uint32).max).all()


def test_lsh_pairs_documents_that_share_a_band_and_only_those():
    keys = np.array([[1, 2], [1, 3], [4, 5], [6, 5], [7, 8]], dtype=np.uint64)
    assert candidate_pairs(keys).tolist() == [[0, 1], [2, 3]]
    sig = np.array([[1, 2, 3, 4], [1, 2, 9, 9], [0, 2, 3, 4]], dtype=np.uint32)
    assert candidate_pairs(band_keys(sig, bands=2, rows=2)).tolist() == [[0, 1], [0, 2]]
    assert lsh_threshold(14, 8) == pytest.approx((1 / 14) ** (1 / 8))


def test_union_find_roots_are_the_smallest_member():
    sets = UnionFind(6)
    assert sets.union(4, 2) and sets.union(5, 4) and not sets.union(2, 5)
    sets.union(3, 1)
    assert [sets.find(i) for i in range(6)] == [0, 1, 2, 1, 2, 2]


def prose(words: int) -> str:
    base = "the farmer walked to the market with his daughter and that was good to have".split()  # mean 4.1
    return " ".join(base[i % len(base)] for i in range(words)) + "."


GOPHER_CASES = [  # (settings, document that fails, document that passes, rule)
    ({}, prose(49), prose(50), "too_few_words"),
    ({"max_words": 60}, prose(61), prose(60), "too_many_words"),
    ({}, prose(40) + " " + "a b c d e f g h i j k l m n o p q r s t u v w x y z " * 4, prose(60), "mean_word_too_short"),
    ({}, prose(50) + " " + "extraordinarily " * 200, prose(50) + " extraordinarily" * 10, "mean_word_too_long"),
    ({}, prose(50) + " #" * 12, prose(50) + " #" * 4, "too_many_hashes"),
    ({}, prose(50) + " ..." * 12, prose(50) + " ..." * 4 + " end.", "too_many_ellipses"),
    ({}, "\n".join("- " + prose(12) for _ in range(10)), "\n".join(["- " + prose(12)] * 9 + [prose(12)]),
     "too_many_bullet_lines"),
    ({}, "\n".join([prose(10)] * 6 + ["and so on and so forth …"] * 4),
     "\n".join([prose(10)] * 7 + ["and so on and so forth …"] * 3), "too_many_ellipsis_lines"),
    ({}, prose(60) + " 1" * 20, prose(60) + " 1" * 10, "too_few_alphabetic_words"),
    ({}, "cat sat on mat with hat " * 10, "cat sat on the mat with hat " * 10, "too_few_stop_words"),
]


@pytest.mark.parametrize("settings, failing, passing, rule", GOPHER_CASES, ids=[c[3] for c in GOPHER_CASES])
def test_each_gopher_rule(settings, failing, passing, rule):
    gopher = GopherFilter(GopherSettings(**settings))
    assert gopher(failing)[1] == rule
    assert gopher(passing)[1] is None


def sentences(n: int) -> str:
    return "\n".join(f"This is line number {i} of a plain page." for i in range(n))


C4_DOC_CASES = [  # (document, rule that removes it)
    (sentences(4), "too_few_sentences"),
    (sentences(6) + "\nLorem ipsum dolor sit amet, consectetur.", "lorem_ipsum"),
    (sentences(6) + "\nThe code reads { and closes it.", "curly_bracket"),
    (sentences(3) + "\nA heading without a stop\nOnly two.\n" + "word " * 5 + "...", "too_few_sentences"),
]


@pytest.mark.parametrize("text, rule", C4_DOC_CASES, ids=["sentences", "lorem", "brace", "lines-dropped-first"])
def test_each_c4_document_rule(text, rule):
    assert C4Filter(C4Settings())(text)[1] == rule


def test_c4_line_rules_drop_lines_and_keep_the_rest():
    kept_lines = sentences(5)
    noisy = "\n".join([kept_lines, "Please enable JavaScript to view this page.", "A line with no end mark",
                       "Too short.", "We use cookies to improve this site.", "word " + "x" * 1001 + " is long.",
                       "And it ends in an ellipsis..."])
    text, rule = C4Filter(C4Settings())(noisy)
    assert rule is None and text == kept_lines
    text, rule = C4Filter(C4Settings(javascript=False, policy=False))(noisy)
    assert "JavaScript" in text and "cookies" in text
    assert C4Filter(C4Settings())(sentences(5) + "\nSee the notes [12].")[0].endswith("See the notes .")


def test_c4_minimum_sentences_edge():
    assert C4Filter(C4Settings(min_sentences=5))(sentences(5))[1] is None
    assert C4Filter(C4Settings(min_sentences=6))(sentences(5))[1] == "too_few_sentences"
    assert C4Filter(C4Settings(min_sentences=2))("One. Two! Three? Fine words.")[1] is None


def test_blocklist_matches_whole_words_and_phrases_only(tmp_path):
    listing = tmp_path / "words.txt"
    listing.write_text("ass\ntwo girls\ns&m\n🖕\n")
    block = BlocklistFilter(BlocklistSettings(path=str(listing)))
    assert block("A first-class assessment of the glass.")[1] is None
    assert block("What an ASS!")[1] == "blocklisted_words"
    assert block("Two   Girls went home.")[1] == "blocklisted_words"
    assert block("two, and girls")[1] is None
    assert block("they like s&m.")[1] == "blocklisted_words"
    assert block("rude 🖕 sign")[1] == "blocklisted_words"
    assert BlocklistFilter(BlocklistSettings(path=str(listing), min_matches=2))("What an ass!")[1] is None


def test_the_c4_blocklist_ships_beside_the_project():
    block = BlocklistFilter(BlocklistSettings())
    assert block("a 2g1c link")[1] == block("see 2 Girls 1 Cup")[1] == "blocklisted_words"


def test_langid_keeps_the_chosen_languages():
    pytest.importorskip("py3langid")
    from attnlab.data.curation.langid import LangIdFilter, LangIdSettings

    english = "The quick brown fox jumps over the lazy dog while the farmer watches from the house."
    french = "Le renard brun rapide saute par-dessus le chien paresseux pendant que le fermier regarde."
    keep = LangIdFilter(LangIdSettings(languages="en"))
    assert keep(english)[1] is None and keep(french)[1] == "language_fr"
    assert LangIdFilter(LangIdSettings(languages="en,fr"))(french)[1] is None
    assert LangIdFilter(LangIdSettings(min_score=1.01))(english)[1] == "low_language_score"
    with pytest.raises(UserError, match="unknown language"):
        LangIdFilter(LangIdSettings(languages="en,xx"))


@pytest.mark.parametrize("spec, overrides, message", [
    ("exact,bogus", [], "unknown pipeline stage bogus"),
    ("minhash,exact", [], "out of order"),
    ("exact,exact", [], "twice"),
    ("minhash", ["minhash.bands=20"], "exceeds num_perm"),
    ("minhash", ["minhash.colour=1"], "no setting 'colour'"),
    ("minhash", ["gopher.min_words=3"], "not in the pipeline"),
    ("gopher", ["gopher.min_words=many"], "must be int"),
])
def test_bad_pipelines_are_one_line(spec, overrides, message):
    with pytest.raises(UserError, match=message):
        parse_pipeline(spec, overrides)


def test_pipeline_settings_and_printed_threshold():
    pipeline = parse_pipeline("exact,gopher,minhash", ["minhash.bands=20", "minhash.rows=5", "minhash.num_perm=100",
                                                       "gopher.max_symbol_word_ratio=1"])
    assert pipeline.settings["gopher"].max_symbol_word_ratio == 1.0
    assert "20 bands x 5 rows: LSH threshold ~0.549" in pipeline.describe()
