"""Text normalisation and stable 64-bit hashing shared by every curation stage.

Hashes must be equal in every process and on every machine (Python's own `hash` is salted per
process), so words are hashed with blake2b once and cached, and n-grams are combined from the
word hashes with 64-bit arithmetic in numpy."""

import hashlib
import re
import unicodedata

import numpy as np

WORD = re.compile(r"\w+")
_MASK64 = (1 << 64) - 1
_WORD_CACHE: dict[str, int] = {}
_WORD_CACHE_LIMIT = 2_000_000


def normalize(text: str) -> str:
    """Case, Unicode compatibility forms and runs of whitespace do not make two texts different."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    return " ".join(text.lower().split())


def digest128(text: str) -> tuple[int, int]:
    """A 128-bit digest of `text` as two unsigned 64-bit integers."""
    raw = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    return int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:], "little")


def hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def word_hashes(words: list[str]) -> np.ndarray:
    """(len(words),) uint64: a stable hash per word, cached per process."""
    cache = _WORD_CACHE
    if len(cache) > _WORD_CACHE_LIMIT:
        cache.clear()
    out = np.empty(len(words), dtype=np.uint64)
    for i, word in enumerate(words):
        value = cache.get(word)
        if value is None:
            value = cache[word] = hash64(word)
        out[i] = value
    return out


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads every input bit over the output (uint64 -> uint64)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def shingle_hashes(text: str, n: int) -> np.ndarray:
    """Sorted unique uint64 hashes of the word n-grams of `text` (lower-cased \\w+ words); a text of
    fewer than n words is one shingle of all its words, a text without words has none."""
    words = WORD.findall(text.lower())
    if not words:
        return np.empty(0, dtype=np.uint64)
    hashed = word_hashes(words)
    n = min(n, len(hashed))
    count = len(hashed) - n + 1
    combined = hashed[:count].copy()
    with np.errstate(over="ignore"):
        for i in range(1, n):
            combined = mix64(combined) + hashed[i:i + count] * np.uint64(0x9E3779B97F4A7C15)
        return np.unique(mix64(combined))


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard similarity of two sorted unique hash arrays (two empty sets are identical)."""
    if len(a) == 0 and len(b) == 0:
        return 1.0
    common = np.intersect1d(a, b, assume_unique=True).size
    return common / (len(a) + len(b) - common)
