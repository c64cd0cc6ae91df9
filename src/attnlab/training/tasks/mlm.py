"""The `mlm` task: encoder pretraining by masked language modelling, optionally with NSP.

    task: mlm
    model: {preset: bert-tiny}                       # any encoder preset (BERT, Longformer, BigBird) or fields
    tokenizer: {kind: wordpiece, vocab_size: 2000}   # or {path: DIR} of a Hugging Face tokenizer
    data: {path: corpus.txt, seq_len: 128, mask_prob: 0.15, whole_word: false, nsp: false, val_fraction: 0.1}
"""

import dataclasses
from pathlib import Path

import numpy as np

from ...checkpoint import load_checkpoint
from ...config import Config
from ...data.corpus import read_text
from ...data.mlm import MLMBlocks
from ...errors import UserError
from ...models.base import ENCODER, build_model, families_of_kind
from ...tokenizers import load_hf_tokenizer, train_tokenizer
from .base import Run, Task, TextTokenizer, cached_splits, model_config, require_path, require_val_fraction


@dataclasses.dataclass
class MLMData(Config):
    section = "data"
    path: str = None  # text file or folder
    seq_len: int = None  # None: 128, or the model's context if shorter
    mask_prob: float = 0.15
    whole_word: bool = False  # mask every WordPiece of a chosen word
    nsp: bool = False  # next-sentence prediction as a second objective
    val_fraction: float = 0.1

    def validate(self):
        if self.seq_len is not None:
            self.require_positive("seq_len")
        if not 0 < self.mask_prob < 1:
            raise self.invalid(f"mask_prob must be in (0, 1), got {self.mask_prob}")
        require_val_fraction(self)


@dataclasses.dataclass
class MLMTokenizer(TextTokenizer):
    """A WordPiece trained on the data, or `path`: a Hugging Face tokenizer directory."""

    kinds = ("wordpiece",)
    kind: str = "wordpiece"
    path: str = None

    def validate(self):
        if self.kind not in self.kinds:
            raise self.invalid(f"masked LM needs a WordPiece tokenizer with [CLS], [SEP] and [MASK], not kind={self.kind!r}; "
                               "use kind: wordpiece, or path: a Hugging Face tokenizer directory")
        super().validate()


def encode_plain(tokenizer, text: str) -> np.ndarray:
    """Token ids of every line, without special tokens (the task adds [CLS] and [SEP] itself)."""
    lines = [line for line in text.splitlines() if line.strip()]
    return np.fromiter((i for ids in tokenizer.encode_batch(lines, add_special_tokens=False) for i in ids),
                       dtype=np.int64)


def masked_lm(run: Run, run_dir: Path, resume: bool):
    data, tok = run.data, run.tokenizer
    if resume:
        model, tokenizer = load_checkpoint(run_dir / "last", families=families_of_kind(ENCODER))
    else:
        text = read_text(require_path(data.path))
        tokenizer = load_hf_tokenizer(Path(tok.path)) if tok.path else train_tokenizer(tok.kind, text, tok.vocab_size)
        model = build_model(_model_config(run.model, tokenizer, data.nsp))
    seq_len = min(128, model.config.max_seq_len) if data.seq_len is None else data.seq_len
    if seq_len > model.config.max_seq_len:
        raise UserError(f"data.seq_len {seq_len} exceeds the model's context of {model.config.max_seq_len} tokens")
    splits = cached_splits(run_dir / "data", data.path, tokenizer, data.val_fraction, encode=encode_plain)
    batches = MLMBlocks(splits, tokenizer, seq_len, run.train.batch_size, mask_prob=data.mask_prob,
                        whole_word=data.whole_word, nsp=data.nsp)
    return model, tokenizer, batches


def _model_config(section: dict, tokenizer, nsp: bool):
    if "preset" not in section and "family" not in section:
        section = {"preset": "bert-tiny", **section}
    fields = dict(vocab_size=tokenizer.vocab_size, head="pretraining" if nsp else "mlm", pad_token_id=tokenizer.pad_id)
    return model_config(section, ENCODER, **fields)


MLM = Task("mlm", ENCODER, masked_lm, data=MLMData, tokenizer=MLMTokenizer, family="bert")
