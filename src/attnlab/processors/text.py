"""The processor of families that read one text: a character or subword tokenizer (tokenizer.json)."""

from pathlib import Path

from ..tokenizers import TOKENIZER_FILE, load_tokenizer


class TextProcessor:
    """Loads the CharTokenizer or SubwordTokenizer saved as tokenizer.json."""

    @staticmethod
    def exists(directory) -> bool:
        return (Path(directory) / TOKENIZER_FILE).is_file()

    @staticmethod
    def load(directory):
        return load_tokenizer(Path(directory))
