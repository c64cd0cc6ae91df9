"""Tokenizers: character level, and byte-level BPE through the `tokenizers` library.

Both save into a checkpoint directory as `tokenizer.json` and load back with
`load_tokenizer(directory)`: a character tokenizer's file says {"type": "char"}, anything
else is a `tokenizers` library file (so Hugging Face tokenizer.json files load as they are).
"""

import json
from pathlib import Path

from .errors import UserError

TOKENIZER_FILE = "tokenizer.json"


class CharTokenizer:
    """One id per character seen in the training text, in sorted order."""

    def __init__(self, chars):
        self.chars = list(chars)
        self.index = {ch: i for i, ch in enumerate(self.chars)}
        self.eos_id = None

    @classmethod
    def train(cls, text: str):
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list:
        try:
            return [self.index[ch] for ch in text]
        except KeyError as missing:
            unseen = sorted({ch for ch in text if ch not in self.index})
            raise UserError(f"text has characters this tokenizer never saw: {''.join(unseen)!r}; "
                            "use text from the same alphabet or a byte-level BPE tokenizer") from missing

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids)

    def save(self, directory: Path):
        data = {"type": "char", "chars": self.chars}
        (Path(directory) / TOKENIZER_FILE).write_text(json.dumps(data, ensure_ascii=False))


class SubwordTokenizer:
    """Any tokenizer of the `tokenizers` library (BPE, WordPiece, ...), saved in its own JSON.

    `train_bpe` makes a byte-level BPE (GPT-2 style): any text encodes, nothing is unknown.
    """

    EOS = "<|endoftext|>"

    def __init__(self, backend):
        self.backend = backend
        self.eos_id = backend.token_to_id(self.EOS)

    @classmethod
    def train_bpe(cls, text: str, vocab_size=1024):
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[cls.EOS],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        backend.train_from_iterator(_chunks(text), trainer=trainer)
        return cls(backend)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def encode(self, text: str) -> list:
        return self.backend.encode(text).ids

    def encode_batch(self, texts) -> list:
        return [e.ids for e in self.backend.encode_batch(texts)]

    def decode(self, ids) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)

    def save(self, directory: Path):
        self.backend.save(str(Path(directory) / TOKENIZER_FILE))


def _chunks(text, size=1 << 16):
    for start in range(0, len(text), size):
        yield text[start:start + size]


TOKENIZER_KINDS = ("char", "bpe")


def train_tokenizer(kind: str, text: str, vocab_size=None):
    if kind == "char":
        return CharTokenizer.train(text)
    if kind == "bpe":
        return SubwordTokenizer.train_bpe(text, vocab_size or 1024)
    raise UserError(f"unknown tokenizer {kind!r}; choose one of {', '.join(TOKENIZER_KINDS)}")


def load_tokenizer(directory: Path, name: str = TOKENIZER_FILE):
    path = Path(directory) / name
    if not path.is_file():
        raise UserError(f"no {name} in {directory}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not a valid tokenizer file: {err}") from None
    if data.get("type") == "char":
        return CharTokenizer(data["chars"])
    from tokenizers import Tokenizer
    try:
        return SubwordTokenizer(Tokenizer.from_file(str(path)))
    except Exception as err:  # the tokenizers library raises its own exception types
        raise UserError(f"{path} is not a valid tokenizer file: {err}") from None
