"""Blocklist filter: a document containing any listed word or phrase as whole words goes
(C4 used the "List of Dirty, Naughty, Obscene, and Otherwise Bad Words")."""

from dataclasses import dataclass
from pathlib import Path

from ...errors import UserError
from .filters import Verdict
from .text import WORD

DEFAULT_BLOCKLIST = Path(__file__).resolve().parents[5] / "shared" / "data" / "curation" / "blocklist_en.txt"


@dataclass
class BlocklistSettings:
    path: str = str(DEFAULT_BLOCKLIST)
    min_matches: int = 1


class BlocklistFilter:
    """Matching is on \\w+ word sequences, case-insensitive: "ass" matches "Ass!" but not "class";
    a phrase matches its words in a row. Entries without any word character (emoji) match as
    plain substrings."""

    def __init__(self, settings: BlocklistSettings):
        path = Path(settings.path)
        if not path.is_file():
            raise UserError(f"blocklist {path} does not exist; set blocklist.path=FILE (one word or phrase a line)")
        entries = [line.strip().lower() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        self.words = {e for e in entries if WORD.fullmatch(e)}
        self.phrases = [" ".join(WORD.findall(e)) for e in entries if not WORD.fullmatch(e) and WORD.search(e)]
        self.symbols = [e for e in entries if not WORD.search(e)]
        self.min_matches = settings.min_matches

    def matches(self, text: str) -> list[str]:
        lower = text.lower()
        words = WORD.findall(lower)
        found = sorted(self.words.intersection(words))
        if self.phrases:
            joined = f" {' '.join(words)} "
            found += [p for p in self.phrases if f" {p} " in joined]
        return found + [s for s in self.symbols if s in lower]

    def __call__(self, text: str) -> Verdict:
        return text, "blocklisted_words" if len(self.matches(text)) >= self.min_matches else None
