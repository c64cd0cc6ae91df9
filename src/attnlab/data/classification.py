"""Labelled text for sequence classification: TSV / CSV / JSONL in, padded batches out.

A file has a text column and a label column (names chosen by the user; defaults "sentence"
or "text", and "label"). A TSV/CSV without a header row names them by position instead (1 and 2
unless told), and a file whose first line reads as an example is recognised as one. The label set is read from the training data, sorted, and saved
with the model so predictions map back to the user's own label strings.
"""

import csv
import json
import random
from pathlib import Path

import torch

from ..errors import UserError

TEXT_COLUMNS = ("sentence", "text")
FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}


def read_rows(path, header: bool = True) -> list:
    """A TSV/CSV or JSONL file -> list of dicts; a TSV/CSV without a header row (header=False)
    gives each row's columns under their positions "1", "2", ..."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file {path} does not exist")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"{path}: unknown data format {path.suffix!r}; use .tsv, .csv or .jsonl")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text (bad byte at offset {err.start}); convert it to UTF-8") from None
    if kind == "jsonl" and not header:
        raise UserError(f"{path} is JSONL, whose fields have names: --no-header applies to TSV/CSV files")
    if kind == "jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:
                raise UserError(f"{path} line {number} is not valid JSON ({err})") from None
            if not isinstance(row, dict):
                raise UserError(f"{path} line {number} must be a JSON object with text and label fields")
            rows.append(row)
    else:
        delimiter = "\t" if kind == "tsv" else ","
        quoting = csv.QUOTE_NONE if kind == "tsv" else csv.QUOTE_MINIMAL  # SST-2 TSVs hold bare quotes
        lines = text.splitlines()
        if header:
            rows = list(csv.DictReader(lines, delimiter=delimiter, quoting=quoting))
        else:
            rows = [{str(i): value for i, value in enumerate(row, 1)}
                    for row in csv.reader(lines, delimiter=delimiter, quoting=quoting) if row]
    if not rows:
        raise UserError(f"{path} holds no examples (an empty file, or only a header)")
    return rows


def read_labelled(path, text_column=None, label_column=None, require_labels=True, header=True):
    """-> (texts, label strings or None). Columns are names, or positions from 1 when the file has
    no header row; a missing column names the columns the file has."""
    rows = read_rows(path, header)
    if header:
        text_column = text_column or next((c for c in TEXT_COLUMNS if c in rows[0]), None)
        label_column = label_column or "label"
    else:
        text_column = _position(text_column or "1", "--text-column")
        label_column = _position(label_column or "2", "--label-column")
    columns = list(rows[0])
    if text_column is None or text_column not in rows[0]:
        _no_header_hint(path, rows, header)
        raise UserError(f"{path} has no text column {text_column or ' or '.join(TEXT_COLUMNS)!r}; its columns are "
                        f"{', '.join(map(str, columns))}; choose one with --text-column")
    if label_column not in rows[0]:
        if require_labels:
            _no_header_hint(path, rows, header)
            raise UserError(f"{path} has no label column {label_column!r}; its columns are "
                            f"{', '.join(map(str, columns))}; choose one with --label-column")
        return [str(r.get(text_column) or "") for r in rows], None
    texts, labels = [], []
    for number, row in enumerate(rows, 1):
        text, label = row.get(text_column), row.get(label_column)
        if text is None or label is None or str(label).strip() == "":
            raise UserError(f"{path} example {number} lacks its {text_column!r} or {label_column!r} value")
        texts.append(str(text).strip())
        labels.append(str(label).strip())
    return texts, labels


def _position(column: str, flag: str) -> str:
    if not str(column).isdigit() or int(column) < 1:
        raise UserError(f"{flag} must be a column position (1, 2, ...) with --no-header, not {column!r}")
    return str(int(column))


def _no_header_hint(path, rows, header: bool):
    """Refuse, saying so, a TSV/CSV whose 'header' is an example: one of its cells is a number, or
    comes back as a value of its column further down (a label, typically)."""
    if not header or Path(path).suffix.lower() == ".jsonl":
        return
    names = [name for name in rows[0] if name is not None]  # None keys extra cells of a long row
    if any(_is_number(name) or any(row.get(name) == name for row in rows[1:]) for name in names):
        first = "\t".join(names)
        raise UserError(f"{path} seems to have no header row: its first line ({first[:60]!r}) reads as an example; "
                        "pass --no-header and give the columns by position, e.g. --text-column 1 --label-column 2")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class LabelSet:
    """Label strings <-> class ids, sorted so the mapping does not depend on file order."""

    def __init__(self, names):
        self.names = list(names)
        self.index = {name: i for i, name in enumerate(self.names)}

    @classmethod
    def from_labels(cls, labels):
        names = sorted(set(labels), key=lambda s: (0, int(s), s) if s.lstrip("-").isdigit() else (1, 0, s))
        if len(names) < 2:
            raise UserError(f"the training data has only one label ({names[0]!r}); a classifier needs at least two")
        return cls(names)

    def ids(self, labels, source="the data") -> list:
        unknown = sorted(set(labels) - set(self.index))
        if unknown:
            raise UserError(f"{source} has label(s) {', '.join(map(repr, unknown[:5]))} that the training data does "
                            f"not have (known: {', '.join(self.names)})")
        return [self.index[label] for label in labels]


def stratified_split(labels, fraction=0.1, seed=0):
    """-> (train indices, validation indices), each class split in the same proportion (at least
    one validation example per class that has two or more)."""
    by_class = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    rng = random.Random(seed)
    train, val = [], []
    for members in by_class.values():
        rng.shuffle(members)
        n_val = min(max(1, round(fraction * len(members))), len(members) - 1) if len(members) > 1 else 0
        val += members[:n_val]
        train += members[n_val:]
    return sorted(train), sorted(val)


class ClassificationData:
    """Examples tokenised once; batches of similar length (less padding) for training and scoring."""

    def __init__(self, tokenizer, texts, label_ids=None, max_length=128):
        if not texts:
            raise UserError("no examples to classify")
        self.texts = list(texts)
        self.label_ids = None if label_ids is None else list(label_ids)
        self.pad_id = tokenizer.pad_id
        self.examples = []  # (ids, token type ids) per text, with special tokens, truncated
        for start in range(0, len(self.texts), 1024):
            encoded = tokenizer.batch_encode(self.texts[start:start + 1024], max_length=max_length)
            for ids, types, mask in zip(encoded["input_ids"], encoded["token_type_ids"], encoded["attention_mask"]):
                length = int(mask.sum())
                self.examples.append((ids[:length], types[:length]))
        self.lengths = [len(ids) for ids, _ in self.examples]

    def __len__(self):
        return len(self.texts)

    def _batch(self, indices) -> dict:
        """Right-padded to the longest example: input_ids, attention_mask, token_type_ids (B, T)."""
        longest = max(self.lengths[i] for i in indices)
        input_ids = torch.full((len(indices), longest), self.pad_id, dtype=torch.long)
        token_types = torch.zeros_like(input_ids)
        mask = torch.zeros_like(input_ids)
        for row, i in enumerate(indices):
            ids, types = self.examples[i]
            input_ids[row, :len(ids)], token_types[row, :len(ids)], mask[row, :len(ids)] = ids, types, 1
        batch = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": token_types}
        if self.label_ids is not None:
            batch["labels"] = torch.tensor([self.label_ids[i] for i in indices], dtype=torch.long)
        return batch

    def shuffled_batches(self, batch_size, seed):
        """Random batches drawn from length-sorted pools of 50 batches, in random order."""
        rng = random.Random(seed)
        order = list(range(len(self)))
        rng.shuffle(order)
        pool = batch_size * 50
        chunks = []
        for start in range(0, len(order), pool):
            part = sorted(order[start:start + pool], key=self.lengths.__getitem__)
            chunks += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
        rng.shuffle(chunks)
        for chunk in chunks:
            yield self._batch(chunk)

    def ordered_batches(self, batch_size):
        """(original indices, batch) in length order, for scoring."""
        order = sorted(range(len(self)), key=self.lengths.__getitem__)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            yield chunk, self._batch(chunk)
