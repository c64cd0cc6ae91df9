"""Tokenizers: character level, and byte-level BPE or WordPiece through the `tokenizers` library.

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

    def token(self, token_id: int) -> str:
        """How the vocabulary spells one id."""
        return self.chars[token_id]

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
        self._batchers = {}  # max_length -> padding/truncating copy of the backend

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

    @classmethod
    def train_wordpiece(cls, text: str, vocab_size=1024):
        """A BERT-style uncased WordPiece with [PAD] [UNK] [CLS] [SEP] [MASK]; texts encode as
        [CLS] text [SEP] (pairs as [CLS] a [SEP] b [SEP] with token types 0 and 1)."""
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        backend.normalizer = normalizers.BertNormalizer(lowercase=True)
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
        backend.train_from_iterator(_chunks(text), trainer=trainer)
        cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
        return cls(backend)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def encode(self, text: str) -> list:
        return self.backend.encode(text).ids

    def encode_batch(self, texts, add_special_tokens=True) -> list:
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=add_special_tokens)]

    def decode(self, ids) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)

    def token_to_id(self, token: str):
        return self.backend.token_to_id(token)

    def token(self, token_id: int) -> str:
        """How the vocabulary spells one id."""
        return self.backend.id_to_token(token_id)

    @property
    def pad_id(self) -> int:
        """The padding id: the file's own padding setting, else [PAD] or <pad>, else 0."""
        if self.backend.padding:
            return self.backend.padding["pad_id"]
        found = [self.token_to_id(t) for t in ("[PAD]", "<pad>") if self.token_to_id(t) is not None]
        return found[0] if found else 0

    def batch_encode(self, texts, max_length=None, pairs=None) -> dict:
        """Texts (or text pairs) with special tokens, truncated to max_length and padded to the
        longest -> {"input_ids", "attention_mask", "token_type_ids"}: LongTensors (B, T)."""
        import torch

        inputs = list(texts) if pairs is None else list(zip(texts, pairs))
        encodings = self._batcher(max_length).encode_batch(inputs)
        return {
            "input_ids": torch.tensor([e.ids for e in encodings], dtype=torch.long),
            "attention_mask": torch.tensor([e.attention_mask for e in encodings], dtype=torch.long),
            "token_type_ids": torch.tensor([e.type_ids for e in encodings], dtype=torch.long),
        }

    def _batcher(self, max_length):
        """A copy of the backend that truncates and pads (made once per max_length), so the
        saved tokenizer keeps its own settings."""
        if max_length not in self._batchers:
            from tokenizers import Tokenizer

            batcher = Tokenizer.from_str(self.backend.to_str())
            batcher.no_truncation()
            if max_length is not None:
                batcher.enable_truncation(max_length)
            batcher.enable_padding(pad_id=self.pad_id, pad_token=self.backend.id_to_token(self.pad_id) or "[PAD]")
            self._batchers[max_length] = batcher
        return self._batchers[max_length]

    def save(self, directory: Path):
        self.backend.save(str(Path(directory) / TOKENIZER_FILE))


def _chunks(text, size=1 << 16):
    for start in range(0, len(text), size):
        yield text[start:start + size]


TOKENIZER_KINDS = ("char", "bpe", "wordpiece")


def train_tokenizer(kind: str, text: str, vocab_size=None):
    if kind == "char":
        return CharTokenizer.train(text)
    if kind == "bpe":
        return SubwordTokenizer.train_bpe(text, vocab_size or 1024)
    if kind == "wordpiece":
        return SubwordTokenizer.train_wordpiece(text, vocab_size or 1024)
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


def load_hf_tokenizer(directory: Path) -> SubwordTokenizer:
    """A Hugging Face tokenizer directory: tokenizer.json, else vocab.txt (WordPiece, lower-cased
    unless tokenizer_config.json says do_lower_case: false), else vocab.json + merges.txt
    (byte-level BPE; <s> ... </s> around each text when the vocabulary has them, as RoBERTa)."""
    from tokenizers import implementations, processors

    directory = Path(directory)
    if (directory / TOKENIZER_FILE).is_file():
        return load_tokenizer(directory)
    if (directory / "vocab.txt").is_file():
        settings_path = directory / "tokenizer_config.json"
        settings = json.loads(settings_path.read_text()) if settings_path.is_file() else {}
        backend = implementations.BertWordPieceTokenizer(str(directory / "vocab.txt"),
                                                         lowercase=settings.get("do_lower_case", True))
        return SubwordTokenizer(backend._tokenizer)
    if (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
        wrapper = implementations.ByteLevelBPETokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))
        backend = wrapper._tokenizer
        bos, eos = backend.token_to_id("<s>"), backend.token_to_id("</s>")
        if bos is not None and eos is not None:
            backend.post_processor = processors.RobertaProcessing(("</s>", eos), ("<s>", bos))
        return SubwordTokenizer(backend)
    raise UserError(f"{directory} has no tokenizer: expected {TOKENIZER_FILE}, vocab.txt, or vocab.json + merges.txt")
