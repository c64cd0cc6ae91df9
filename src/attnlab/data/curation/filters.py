"""Heuristic quality filters: the Gopher rules (Rae et al. 2021, appendix A) and the C4 rules
(Raffel et al. 2020, section 2.2). A filter is called with a document's text and returns
(text, None) to keep it, perhaps with lines removed, or (text, rule) naming why it goes."""

import re
from dataclasses import dataclass

from .text import WORD

SYMBOLS = re.compile(r"[^\w\s]+")  # a run of punctuation is a token of its own, as a word tokenizer makes it
NUMBER = re.compile(r"(?<!\w)[\d_]+(?!\w)")  # a word without a letter
SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)")
CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]")
TERMINAL = (".", "?", "!", '"', "'")
POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
GOPHER_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")

Verdict = tuple[str, str | None]


@dataclass
class GopherSettings:
    min_words: int = 50
    max_words: int = 100_000
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    max_symbol_word_ratio: float = 0.1
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    min_alpha_words_ratio: float = 0.8
    min_stop_words: int = 2


class GopherFilter:
    """Words are runs of word characters (counts, lengths, stop words); ratios are over tokens, the
    words and the runs of punctuation between them, as in datatrove's version of these rules (a
    comma is a token without a letter)."""

    def __init__(self, settings: GopherSettings):
        self.s = settings

    def __call__(self, text: str) -> Verdict:
        return text, self.rule(text)

    def rule(self, text: str) -> str | None:
        s = self.s
        words = WORD.findall(text)
        tokens = len(words) + len(SYMBOLS.findall(text))
        if not words or len(words) < s.min_words:
            return "too_few_words"
        if len(words) > s.max_words:
            return "too_many_words"
        mean = sum(map(len, words)) / len(words)
        if mean < s.min_mean_word_length:
            return "mean_word_too_short"
        if mean > s.max_mean_word_length:
            return "mean_word_too_long"
        if text.count("#") / tokens > s.max_symbol_word_ratio:
            return "too_many_hashes"
        if (text.count("...") + text.count("…")) / tokens > s.max_symbol_word_ratio:
            return "too_many_ellipses"
        lines = text.splitlines() or [""]
        if sum(line.lstrip().startswith(("•", "-")) for line in lines) / len(lines) > s.max_bullet_lines_ratio:
            return "too_many_bullet_lines"
        if sum(line.rstrip().endswith(("...", "…")) for line in lines) / len(lines) > s.max_ellipsis_lines_ratio:
            return "too_many_ellipsis_lines"
        if (len(words) - len(NUMBER.findall(text))) / tokens < s.min_alpha_words_ratio:
            return "too_few_alphabetic_words"
        if len(set(GOPHER_STOP_WORDS).intersection(w.lower() for w in words)) < s.min_stop_words:
            return "too_few_stop_words"
        return None


@dataclass
class C4Settings:
    terminal_punctuation: bool = True  # keep only lines ending in . ? ! " ' (not in an ellipsis)
    min_words_per_line: int = 3
    max_word_length: int = 1000  # a line with a longer word goes
    min_sentences: int = 5
    remove_citations: bool = True
    lorem_ipsum: bool = True  # a document saying "lorem ipsum" goes
    curly_bracket: bool = True  # a document with "{" goes
    javascript: bool = True  # a line mentioning javascript goes
    policy: bool = True  # a line about cookies or terms of use goes


class C4Filter:
    """Line rules first (a failing line goes); the document rules look at the lines kept."""

    def __init__(self, settings: C4Settings):
        self.s = settings

    def __call__(self, text: str) -> Verdict:
        kept, sentences = [], 0
        for raw in text.splitlines():
            line, rule = self.line(raw.strip())
            if rule is not None and rule.startswith("doc:"):
                return text, rule[4:]
            if rule is None:
                kept.append(line)
                sentences += max(1, len(SENTENCE_END.findall(line)))
        if sentences < self.s.min_sentences:
            return text, "too_few_sentences"
        return "\n".join(kept), None

    def line(self, line: str) -> tuple[str, str | None]:
        """(the line, None to keep it | a reason to drop it | "doc:" + a reason to drop the document)."""
        s = self.s
        words = line.split()
        if any(len(w) > s.max_word_length for w in words):
            return line, "long_word"
        if s.remove_citations:
            line = CITATION.sub("", line)
        if s.terminal_punctuation and (not line.endswith(TERMINAL) or line.endswith("...")):
            return line, "no_terminal_punctuation"
        if len(words) < s.min_words_per_line:
            return line, "too_few_words"
        lower = line.lower()
        if s.lorem_ipsum and "lorem ipsum" in lower:
            return line, "doc:lorem_ipsum"
        if s.javascript and "javascript" in lower:
            return line, "javascript"
        if s.curly_bracket and "{" in line:
            return line, "doc:curly_bracket"
        if s.policy and any(p in lower for p in POLICY):
            return line, "policy"
        return line, None
