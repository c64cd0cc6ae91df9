"""The `seq2seq` task: train an encoder-decoder (the original Transformer or T5) on pairs;
the `span_corruption` task: T5 pretraining on plain text. Both default to 32 examples a batch.

    task: seq2seq
    model:     preset: NAME (transformer-tiny, t5-tiny, ...) or family: transformer | t5 plus fields
    tokenizer: kind: char | bpe, vocab_size (bpe), shared: true (one tokenizer for both sides);
               with shared: false, target_kind and target_vocab_size may differ from the source's
    data:      train (or path, as `--data` sets it): pairs file (.tsv or .jsonl); val: pairs file,
               or val_fraction of train (0.1), held out by a shuffle seeded with train.seed;
               bad_lines: error (default: name the lines that are not pairs) or skip (count them)

    task: span_corruption
    model:     t5 fields (vocab_size is the tokenizer's plus the sentinels)
    tokenizer: kind: char | bpe, vocab_size (bpe)
    data:      path: text file or folder; window (64) tokens a row; sentinels (100); val_fraction (0.1)
"""

import dataclasses
from pathlib import Path

from ...checkpoint import load_checkpoint
from ...config import Config
from ...data.corpus import read_text
from ...data.seq2seq import (BAD_LINES, EOS_ID, PAD_ID, START_ID, Seq2SeqBatches, check_lengths, encode_pairs, holdout,
                             read_pairs, train_seq2seq_tokenizer)
from ...data.span_corruption import SpanCorruptionBatches
from ...errors import UserError
from ...models.base import SEQ2SEQ as SEQ2SEQ_KIND
from ...models.base import build_model
from ...processors import Seq2SeqTokenizers
from .base import Run, Task, TextTokenizer, cached_splits, model_config, require_path, require_val_fraction

SEQ2SEQ_BATCH_SIZE = 32  # pairs a batch unless train.batch_size says otherwise


@dataclasses.dataclass
class Seq2SeqData(Config):
    section = "data"
    train: str = None  # pairs file; `path` (what --data sets) when this is not given
    path: str = None
    val: str = None  # pairs file; None: hold out val_fraction of train
    val_fraction: float = 0.1
    bad_lines: str = "error"  # a line that is not a pair: error (naming them) or skip (counting them)

    def validate(self):
        require_val_fraction(self)
        self.require_choice("bad_lines", BAD_LINES)


@dataclasses.dataclass
class Seq2SeqTextTokenizer(TextTokenizer):
    """Character or byte-level BPE, with <pad>, </s> and <s> as ids 0, 1 and 2."""

    kinds = ("char", "bpe")


@dataclasses.dataclass
class Seq2SeqTokenizer(Seq2SeqTextTokenizer):
    shared: bool = True  # one tokenizer for sources and targets
    target_kind: str = None  # with shared: false; None: as kind
    target_vocab_size: int = None  # with shared: false; None: as vocab_size

    def validate(self):
        super().validate()
        if self.target_kind is not None:
            self.require_choice("target_kind", self.kinds)
        if self.target_vocab_size is not None:
            self.require_positive("target_vocab_size")


@dataclasses.dataclass
class SpanCorruptionData(Config):
    section = "data"
    path: str = None  # text file or folder
    window: int = 64  # tokens a row, before corruption
    sentinels: int = 100  # sentinel ids above the tokenizer's vocabulary
    val_fraction: float = 0.1

    def validate(self):
        self.require_positive("window", "sentinels")
        require_val_fraction(self)


def seq2seq(run: Run, run_dir: Path, resume: bool):
    data = run.data
    train_path = data.train or data.path
    if train_path is None:
        raise UserError("data.train is missing: point it at a pairs file (source<TAB>target per line, or JSONL), "
                        "or pass --data")
    numbered = read_pairs(train_path, data.bad_lines)
    pairs = [(source, target) for _, source, target in numbered]
    if resume:
        model, _ = load_checkpoint(run_dir / "last", with_tokenizer=False)
        tokenizers = Seq2SeqTokenizers.load(run_dir / "last")
    else:
        tokenizers = _train_tokenizers(run.tokenizer, pairs)
        model = build_model(_model_config(run.model, tokenizers))
    c = model.config

    def encoded(numbered, path):
        ids = encode_pairs([(source, target) for _, source, target in numbered], tokenizers, c.eos_id)
        check_lengths(ids, [line for line, _, _ in numbered], c, path)
        return ids

    train_ids = encoded(numbered, train_path)
    if data.val is not None:
        splits = {"train": train_ids, "val": encoded(read_pairs(data.val, data.bad_lines), data.val)}
    else:
        train_split, val_split = holdout(train_ids, data.val_fraction, run.train.seed)
        if not val_split:
            raise UserError(f"{train_path} has {len(pairs)} pair(s), too few to hold out a validation split; "
                            "add pairs or give data.val")
        splits = {"train": train_split, "val": val_split}
    return model, tokenizers, Seq2SeqBatches(splits, run.train.batch_size, c.pad_id)


def _train_tokenizers(section: Seq2SeqTokenizer, pairs) -> Seq2SeqTokenizers:
    sources, targets = [s for s, _ in pairs], [t for _, t in pairs]
    if section.shared:
        return Seq2SeqTokenizers(train_seq2seq_tokenizer(section.kind, sources + targets, section.vocab_size))
    target_vocab_size = section.vocab_size if section.target_vocab_size is None else section.target_vocab_size
    return Seq2SeqTokenizers(train_seq2seq_tokenizer(section.kind, sources, section.vocab_size),
                             train_seq2seq_tokenizer(section.target_kind or section.kind, targets, target_vocab_size))


def _model_config(section: dict, tokenizers: Seq2SeqTokenizers):
    section = dict(section)
    if "preset" not in section:
        section.setdefault("family", "transformer")
    fields = {"vocab_size": tokenizers.source.vocab_size, "pad_id": PAD_ID, "eos_id": EOS_ID,
              "decoder_start_id": START_ID}
    if not tokenizers.shared:  # a family with one vocabulary for both sides (T5) names these fields unknown
        fields.update(tgt_vocab_size=tokenizers.target.vocab_size, share_embeddings=False)
    return model_config(section, SEQ2SEQ_KIND, **fields)


def t5_span_corruption(run: Run, run_dir: Path, resume: bool):
    """T5 pretraining: windows of data.window tokens with 15 % of their tokens dropped in spans
    of 3 on average; sentinel ids sit above the tokenizer's vocabulary."""
    data, tok = run.data, run.tokenizer
    if resume:
        model, _ = load_checkpoint(run_dir / "last", with_tokenizer=False)
        tokenizers = Seq2SeqTokenizers.load(run_dir / "last")
    else:
        text = read_text(require_path(data.path))
        tokenizers = Seq2SeqTokenizers(train_seq2seq_tokenizer(tok.kind, text.splitlines(keepends=True), tok.vocab_size))
        special = {"pad_id": PAD_ID, "eos_id": EOS_ID, "decoder_start_id": PAD_ID}
        model = build_model(model_config({"family": "t5", **run.model}, SEQ2SEQ_KIND,
                                         vocab_size=tokenizers.source.vocab_size + data.sentinels, **special))
    c = model.config
    sentinels = list(range(c.vocab_size - 1, c.vocab_size - 1 - data.sentinels, -1))  # <extra_id_0> is the last id
    splits = cached_splits(run_dir / "data", data.path, tokenizers.source, data.val_fraction)
    batches = SpanCorruptionBatches(splits, data.window, run.train.batch_size, sentinels, c.eos_id, c.pad_id)
    return model, tokenizers, batches


SEQ2SEQ = Task("seq2seq", SEQ2SEQ_KIND, seq2seq, data=Seq2SeqData, tokenizer=Seq2SeqTokenizer, family="transformer",
               batch_size=SEQ2SEQ_BATCH_SIZE)
SPAN_CORRUPTION = Task("span_corruption", SEQ2SEQ_KIND, t5_span_corruption, data=SpanCorruptionData, tokenizer=Seq2SeqTextTokenizer, family="t5",
                       batch_size=SEQ2SEQ_BATCH_SIZE)
