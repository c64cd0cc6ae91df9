"""The processor of families that read one text: a character or subword tokenizer (tokenizer.json)."""

from pathlib import Path

from ..tokenizers import TOKENIZER_FILE, CharTokenizer, load_tokenizer

EXAMPLE_ALPHABET = "abcdefghijklmnopqrstuvwxyz .,!?'-\n0123456789"


class TextProcessor:
    """Loads the CharTokenizer or SubwordTokenizer saved as tokenizer.json."""

    @staticmethod
    def exists(directory) -> bool:
        return (Path(directory) / TOKENIZER_FILE).is_file()

    @staticmethod
    def load(directory):
        return load_tokenizer(Path(directory))

    @staticmethod
    def example(config) -> CharTokenizer:
        """A character tokenizer of exactly the model config's `vocab_size` ids (a plain alphabet,
        then other letters), so that any id a model of that size emits decodes: for tests and examples."""
        return CharTokenizer(example_characters(config.vocab_size))


def example_characters(count: int) -> list:
    extra = max(0, count - len(EXAMPLE_ALPHABET))
    return (sorted(EXAMPLE_ALPHABET) + [chr(0x100 + i) for i in range(extra)])[:count]
