"""Near-duplicates made by controlled edits, to measure what deduplication finds: take a text,
and insert, delete, swap or replace a given fraction of its words."""

import random

EDITS = ("insert", "delete", "swap", "replace")


def edit_words(words: list[str], fraction: float, rng: random.Random, vocabulary: list[str]) -> list[str]:
    """`words` after round(fraction * len(words)) random edits, each an insert, delete, swap of
    neighbours or replacement (new words drawn from `vocabulary`)."""
    out = list(words)
    for _ in range(round(fraction * len(words))):
        edit = rng.choice(EDITS)
        at = rng.randrange(len(out))
        if edit == "insert":
            out.insert(at, rng.choice(vocabulary))
        elif edit == "delete" and len(out) > 1:
            del out[at]
        elif edit == "swap" and at + 1 < len(out):
            out[at], out[at + 1] = out[at + 1], out[at]
        else:
            out[at] = rng.choice(vocabulary)
    return out


NEWLINE = "\n"


def word_blocks(text: str, words_per_block: int) -> list[list[str]]:
    """Consecutive blocks of about `words_per_block` words (the last partial one dropped); a line
    break is a word of its own, NEWLINE, so a block keeps its lines."""
    words = text.replace(NEWLINE, f" {NEWLINE} ").split(" ")
    words = [w for w in words if w]
    blocks, start, count = [], 0, 0
    for i, word in enumerate(words):
        count += word != NEWLINE
        if count == words_per_block:
            blocks.append(words[start:i + 1])
            start, count = i + 1, 0
    return blocks


def join_words(words: list[str]) -> str:
    return " ".join(words).replace(f" {NEWLINE} ", NEWLINE).replace(NEWLINE + " ", NEWLINE).strip()


def near_duplicate_corpus(text: str, bases: int, fractions: tuple[float, ...], seed: int = 0,
                          words_per_doc: int = 170) -> list[dict]:
    """Documents of about 1 kB: `bases` distinct blocks of `text`, and for each one an edited copy per
    fraction in `fractions`; each record has "id", "text" and "base" (the block it came from), shuffled."""
    rng = random.Random(seed)
    blocks = word_blocks(text, words_per_doc)
    if len(blocks) < bases:
        raise ValueError(f"the text gives {len(blocks)} blocks of {words_per_doc} words, fewer than {bases}")
    chosen = rng.sample(range(len(blocks)), bases)
    vocabulary = sorted({w for block in blocks for w in block} - {NEWLINE})
    docs = []
    for base in chosen:
        docs.append({"base": base, "edit": 0.0, "text": join_words(blocks[base])})
        for fraction in fractions:
            docs.append({"base": base, "edit": fraction,
                         "text": join_words(edit_words(blocks[base], fraction, rng, vocabulary))})
    rng.shuffle(docs)
    return [{"id": f"doc{i:06d}", **doc} for i, doc in enumerate(docs)]
