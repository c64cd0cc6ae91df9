"""The processor of encoder-decoders: a source tokenizer and a target tokenizer (the same one when
shared), saved as tokenizer.json plus target_tokenizer.json when the target has its own."""

import json
from pathlib import Path

from ..tokenizers import TOKENIZER_FILE, CharTokenizer, load_tokenizer
from .text import example_characters

TARGET_TOKENIZER_FILE = "target_tokenizer.json"
SPECIAL_TOKENS = ("<pad>", "</s>", "<s>")  # ids 0, 1, 2 in every seq2seq tokenizer made here


def _tokenizer_json(tokenizer) -> str:
    if isinstance(tokenizer, CharTokenizer):
        return json.dumps({"type": "char", "chars": tokenizer.chars}, ensure_ascii=False)
    return tokenizer.backend.to_str()


class Seq2SeqTokenizers:
    """The source and target tokenizers (the same object when shared). Saved as tokenizer.json,
    plus target_tokenizer.json when the target has its own."""

    def __init__(self, source, target=None):
        self.source, self.target = source, target or source

    @property
    def shared(self) -> bool:
        return self.target is self.source

    def save(self, directory):
        self.source.save(directory)
        if not self.shared:
            (Path(directory) / TARGET_TOKENIZER_FILE).write_text(_tokenizer_json(self.target), encoding="utf-8")

    @classmethod
    def load(cls, directory):
        source = load_tokenizer(directory)
        if (Path(directory) / TARGET_TOKENIZER_FILE).is_file():
            return cls(source, load_tokenizer(directory, TARGET_TOKENIZER_FILE))
        return cls(source)

    @classmethod
    def example(cls, config) -> "Seq2SeqTokenizers":
        """One shared character tokenizer of exactly the model config's `vocab_size` ids, <pad>, </s>,
        <s> first, for tests and examples."""
        return cls(CharTokenizer(list(SPECIAL_TOKENS) + example_characters(config.vocab_size - len(SPECIAL_TOKENS))))

    @classmethod
    def exists(cls, directory) -> bool:
        return (Path(directory) / TOKENIZER_FILE).is_file()


