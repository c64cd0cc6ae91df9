"""Sequence-to-sequence data: (source, target) pairs from TSV or JSONL, tokenised with one
shared tokenizer or one per side, batched by length and padded to the longest in each batch.

Token ids 0, 1, 2 are <pad>, </s> (end of sequence) and <s> (the decoder's start token) in
every tokenizer made here. Sources and targets both end with </s>.
"""

import json
import sys
from pathlib import Path

import torch

from ..errors import UserError
from ..models.seq2seq import IGNORE_INDEX
from ..processors.seq2seq import SPECIAL_TOKENS
from ..tokenizers import CharTokenizer, SubwordTokenizer
from .batch import Batch

PAD_ID, EOS_ID, START_ID = 0, 1, 2


# -- reading -----------------------------------------------------------------------------------
BAD_LINES = ("error", "skip")  # what reading does with a line that is not a pair


def read_pairs(path, bad_lines: str = "error", log=None) -> list:
    """A .tsv (source<TAB>target per line) or .jsonl ({"source": ..., "target": ...} per line)
    file -> [(line number, source, target)], the line numbers for error messages. Blank lines
    are skipped; a UTF-8 byte order mark at the start of the file is not data. Lines that are not
    pairs are an error naming how many and where, or with bad_lines="skip" are left out and
    reported through `log` (stderr by default)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"pairs file {path} does not exist")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text (bad byte at offset {err.start}); convert it to UTF-8") from None
    parse = _json_pair if path.suffix in (".jsonl", ".json") else _tsv_pair
    pairs, bad = [], []  # bad: (line number, what is wrong)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        pair = parse(line)
        if isinstance(pair, str):
            bad.append((number, pair))
        else:
            pairs.append((number, *pair))
    if bad:
        numbers = ", ".join(str(n) for n, _ in bad[:5]) + (", ..." if len(bad) > 5 else "")
        summary = (f"{path}: {len(bad)} of {len(bad) + len(pairs)} lines are not pairs (lines {numbers}; "
                   f"line {bad[0][0]}: {bad[0][1]})")
        if bad_lines != "skip":
            raise UserError(f"{summary}; fix them, or leave them out with data.bad_lines=skip")
        (log or _stderr)(f"skipped {summary}")
    if not pairs:
        raise UserError(f"pairs file {path} holds no pairs: write one source<TAB>target (or JSON) per line")
    return pairs


def _stderr(message: str):
    print(message, file=sys.stderr)


def _tsv_pair(line):
    """(source, target), or what is wrong with the line."""
    columns = line.split("\t")
    if len(columns) != 2:
        return f"expected 2 tab-separated columns (source, target), found {len(columns)}"
    return columns[0], columns[1]


def _json_pair(line):
    try:
        record = json.loads(line)
    except ValueError as err:
        return f"not valid JSON ({err})"
    if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("source", "target")):
        return 'expected an object with string fields "source" and "target"'
    return record["source"], record["target"]


# -- tokenizers --------------------------------------------------------------------------------
def train_seq2seq_tokenizer(kind: str, texts, vocab_size=None):
    """A tokenizer whose first ids are SPECIAL_TOKENS: char level or byte-level BPE."""
    if kind == "char":
        chars = sorted(set("".join(texts)))
        return CharTokenizer(list(SPECIAL_TOKENS) + chars)
    if kind == "bpe":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size or 1024, special_tokens=list(SPECIAL_TOKENS),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        backend.train_from_iterator(texts, trainer=trainer)
        return SubwordTokenizer(backend)
    raise UserError(f"unknown tokenizer {kind!r}; choose one of char, bpe")


def encode_source(tokenizers, text: str, eos_id: int = EOS_ID) -> list:
    return tokenizers.source.encode(text) + [eos_id]


def encode_pairs(pairs, tokenizers, eos_id: int = EOS_ID) -> list:
    return [(encode_source(tokenizers, s, eos_id), tokenizers.target.encode(t) + [eos_id]) for s, t in pairs]


def decode_target(tokenizers, ids, special_ids) -> str:
    return tokenizers.target.decode([i for i in ids if i not in special_ids])


def check_length(ids, limit: int, side: str, where: str, fix: str):
    if len(ids) > limit:
        raise UserError(f"{where}: the {side} has {len(ids)} tokens (with </s>) but the model allows {limit}; {fix}")


def check_lengths(encoded, lines, config, where: str):
    """One clear error, naming its file line, for the first pair that the model cannot take."""
    source_field, target_field = config.length_fields
    for line, (source, target) in zip(lines, encoded):
        check_length(source, config.max_seq_len, "source", f"{where} line {line}",
                     f"shorten it or raise the model's source length (model.{source_field})")
        check_length(target, config.max_target_len, "target", f"{where} line {line}",
                     f"shorten it or raise the model's target length (model.{target_field})")


def holdout(items: list, fraction: float, seed: int) -> tuple:
    """A seeded shuffle split -> (train, val) with about `fraction` of the items in val (none when
    there are too few) and at least one in train: the same seed gives the same split, and a
    sorted file gives an unbiased one."""
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    cut = max(1, int(len(items) * (1 - fraction)))
    return [items[i] for i in order[:cut]], [items[i] for i in order[cut:]]


# -- batches -----------------------------------------------------------------------------------
def collate(pairs, pad_id: int = PAD_ID) -> Batch:
    """[(source ids, target ids)] -> input_ids (B, S) and attention_mask (B, S) padded on the right
    with pad_id, labels (B, T) padded with -100 (ignored by the loss); a row's tokens are its
    source and target tokens (the decoder reads the target, shifted)."""
    src_len = max(len(s) for s, _ in pairs)
    tgt_len = max(len(t) for _, t in pairs)
    input_ids = torch.full((len(pairs), src_len), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(pairs), src_len), dtype=torch.long)
    labels = torch.full((len(pairs), tgt_len), IGNORE_INDEX, dtype=torch.long)
    for row, (source, target) in enumerate(pairs):
        input_ids[row, :len(source)] = torch.tensor(source)
        attention_mask[row, :len(source)] = 1
        labels[row, :len(target)] = torch.tensor(target)
    tokens = torch.tensor([len(source) + len(target) for source, target in pairs])
    return Batch({"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}, tokens)


class Seq2SeqBatches:
    """Batches of pairs of similar length. Each split is sorted by (source, target) length and a
    batch is `batch_size` neighbours from a uniformly random pair on, wrapping around the end:
    every pair lies in exactly `batch_size` of those windows, so every pair is equally likely
    and every batch is full; only the few windows that wrap mix short and long pairs."""

    def __init__(self, splits: dict, batch_size: int, pad_id: int = PAD_ID):
        for name, pairs in splits.items():
            if not pairs:
                raise UserError(f"the {name} split has no pairs; give it data or lower data.val_fraction")
        self.splits = {name: sorted(pairs, key=lambda p: (len(p[0]), len(p[1]))) for name, pairs in splits.items()}
        self.batch_size, self.pad_id = batch_size, pad_id

    def sample(self, split: str, generator: torch.Generator) -> Batch:
        pairs = self.splits[split]
        size = min(self.batch_size, len(pairs))
        start = int(torch.randint(len(pairs), (1,), generator=generator))
        return collate([pairs[(start + i) % len(pairs)] for i in range(size)], self.pad_id)
