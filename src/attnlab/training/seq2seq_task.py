"""The `seq2seq` task: train an encoder-decoder (the original Transformer or T5) on pairs;
the `span_corruption` task: T5 pretraining on plain text.

Run config sections:
  data:      train (or path, as `--data` sets it): pairs file (.tsv or .jsonl); val: pairs file,
             or val_fraction of train (0.1), held out by a shuffle seeded with train.seed
  tokenizer: kind: char | bpe, vocab_size (bpe), shared: true (one tokenizer for both sides);
             with shared: false, target_kind and target_vocab_size may differ from the source's
  model:     preset: NAME (transformer-tiny, t5-tiny, ...) or family: transformer | t5 plus fields
  train:     as for every task; batch_size is in pairs
"""

from pathlib import Path

from ..checkpoint import load_checkpoint
from ..data.corpus import read_text
from ..data.seq2seq import (EOS_ID, PAD_ID, START_ID, Seq2SeqBatches, Seq2SeqTokenizers, check_lengths, encode_pairs,
                            holdout, read_pairs, train_seq2seq_tokenizer)
from ..data.span_corruption import SpanCorruptionBatches
from ..errors import UserError
from ..models.base import build_model, preset
from .tasks import cached_splits, model_config, task
from .trainer import TrainConfig


@task("seq2seq")
def seq2seq(run: dict, run_dir: Path, resume: bool):
    data, train = run.get("data", {}), run.get("train", {})
    train_path = data.get("train", data.get("path"))
    if train_path is None:
        raise UserError("data.train is missing: point it at a pairs file (source<TAB>target per line, or JSONL), "
                        "or pass --data")
    numbered = read_pairs(train_path)
    pairs = [(source, target) for _, source, target in numbered]
    if resume:
        model, _ = load_checkpoint(run_dir / "last", with_tokenizer=False)
        tokenizers = Seq2SeqTokenizers.load(run_dir / "last")
    else:
        tokenizers = _train_tokenizers(run.get("tokenizer", {}), pairs)
        model = build_model(_model_config(run.get("model", {}), tokenizers))
    c = model.config

    def encoded(numbered, path):
        ids = encode_pairs([(source, target) for _, source, target in numbered], tokenizers, c.eos_id)
        check_lengths(ids, [line for line, _, _ in numbered], c, path)
        return ids

    train_ids = encoded(numbered, train_path)
    if "val" in data:
        splits = {"train": train_ids, "val": encoded(read_pairs(data["val"]), data["val"])}
    else:
        fraction = float(data.get("val_fraction", 0.1))
        if not 0 < fraction < 1:
            raise UserError(f"data.val_fraction must be in (0, 1), got {fraction}")
        train_split, val_split = holdout(train_ids, fraction, TrainConfig.from_dict(train).seed)
        if not val_split:
            raise UserError(f"{train_path} has {len(pairs)} pair(s), too few to hold out a validation split; "
                            "add pairs or give data.val")
        splits = {"train": train_split, "val": val_split}
    return model, tokenizers, Seq2SeqBatches(splits, int(train.get("batch_size", 32)), c.pad_id)


def _train_tokenizers(section: dict, pairs) -> Seq2SeqTokenizers:
    """`kind` and `vocab_size` for both sides; with shared: false, `target_kind` and
    `target_vocab_size` may differ (e.g. characters in, BPE words out)."""
    kind, vocab_size = section.get("kind", "char"), section.get("vocab_size")
    sources, targets = [s for s, _ in pairs], [t for _, t in pairs]
    if section.get("shared", True):
        return Seq2SeqTokenizers(train_seq2seq_tokenizer(kind, sources + targets, vocab_size))
    return Seq2SeqTokenizers(train_seq2seq_tokenizer(kind, sources, vocab_size),
                             train_seq2seq_tokenizer(section.get("target_kind", kind), targets,
                                                     section.get("target_vocab_size", vocab_size)))


def _model_config(section: dict, tokenizers: Seq2SeqTokenizers):
    section = dict(section)
    if "preset" not in section:
        section.setdefault("family", "transformer")
    special = {"pad_id": PAD_ID, "eos_id": EOS_ID, "decoder_start_id": START_ID}
    family = preset(section["preset"]).family if "preset" in section else section["family"]
    if family == "t5":
        if not tokenizers.shared:
            raise UserError("T5 has one vocabulary for both sides: set tokenizer.shared to true")
        return model_config(section, vocab_size=tokenizers.source.vocab_size, **special)
    target_vocab = None if tokenizers.shared else tokenizers.target.vocab_size
    return model_config(section, vocab_size=tokenizers.source.vocab_size, tgt_vocab_size=target_vocab,
                        share_embeddings=tokenizers.shared, **special)


@task("span_corruption")
def t5_span_corruption(run: dict, run_dir: Path, resume: bool):
    """T5 pretraining on a text file or folder: windows of data.window tokens (default 64) with
    15 % of their tokens dropped in spans of 3 on average; sentinel ids sit above the
    tokenizer's vocabulary (data.sentinels of them, default 100)."""
    data, train = run.get("data", {}), run.get("train", {})
    n_sentinels = int(data.get("sentinels", 100))
    if resume:
        model, _ = load_checkpoint(run_dir / "last", with_tokenizer=False)
        tokenizers = Seq2SeqTokenizers.load(run_dir / "last")
    else:
        if "path" not in data:
            raise UserError("data.path is missing: point it at a text file or folder")
        section = run.get("tokenizer", {})
        text = read_text(data["path"])
        tokenizers = Seq2SeqTokenizers(train_seq2seq_tokenizer(section.get("kind", "char"), text.splitlines(keepends=True),
                                                               section.get("vocab_size")))
        special = {"pad_id": PAD_ID, "eos_id": EOS_ID, "decoder_start_id": PAD_ID}
        model = build_model(model_config({"family": "t5", **run.get("model", {})},
                                         vocab_size=tokenizers.source.vocab_size + n_sentinels, **special))
    c = model.config
    sentinels = list(range(c.vocab_size - 1, c.vocab_size - 1 - n_sentinels, -1))  # <extra_id_0> is the last id
    splits = cached_splits(run_dir / "data", data, tokenizers.source, float(data.get("val_fraction", 0.1)))
    batches = SpanCorruptionBatches(splits, int(data.get("window", 64)), int(train.get("batch_size", 32)), sentinels,
                                    c.eos_id, c.pad_id)
    return model, tokenizers, batches
