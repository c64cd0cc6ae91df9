"""Text corpora: a file or a folder of files -> token ids -> memmap on disk -> random blocks."""

import gzip
import json
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .batch import Batch


# A folder holding this file is read as the files it lists ({"files": [relative paths], "text_field"}),
# not as every file in it: how `attnlab curate` output, with its reports beside the data, is read.
CORPUS_MANIFEST = "corpus.json"


def read_text(path) -> str:
    """The UTF-8 text of a file, or of every file under a folder (sorted, joined by newlines); a
    JSONL file gives the text field of each line, a .gz file is decompressed, and a folder with a
    corpus.json manifest gives the files it lists."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"data path {path} does not exist")
    files, text_field = corpus_files(path)
    if not files:
        raise UserError(f"data folder {path} has no files")
    text = "\n".join(file_text(file, text_field) for file in files)
    if not text.strip():
        raise UserError(f"data path {path} holds no text")
    return text


def corpus_files(path: Path) -> tuple[list[Path], str]:
    """The files to read under `path`, and the JSONL field that holds their text."""
    if not path.is_dir():
        return [path], "text"
    manifest = path / CORPUS_MANIFEST
    if manifest.is_file():
        try:
            listed = json.loads(manifest.read_text())
            return [path / name for name in listed["files"]], listed.get("text_field", "text")
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{manifest} is not a corpus manifest ({{\"files\": [...]}})") from None
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")), "text"


def file_text(file: Path, text_field: str) -> str:
    raw = file.read_bytes()
    if file.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise UserError(f"{file} is not a readable gzip file ({err})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{file} is not UTF-8 text (bad byte at offset {err.start}); convert it to UTF-8") from None
    if not file.name.removesuffix(".gz").endswith(".jsonl"):
        return text
    return "\n".join(jsonl_record(line, file, number, text_field)[text_field]
                     for number, line in enumerate(text.splitlines(), 1) if line.strip())


def jsonl_record(line: str, name, number: int, text_field: str, fix: str = "") -> dict:
    """One JSONL line as an object holding a string `text_field`; one line naming the file and line
    number (and `fix`, the way to name another field) when it is not one."""
    try:
        record = json.loads(line)
    except ValueError:
        raise UserError(f"{name} line {number} is not valid JSON") from None
    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
        raise UserError(f"{name} line {number} has no string field {text_field!r}{fix}")
    return record


def encode_text(tokenizer, text: str, chunk_chars: int = 1 << 16) -> np.ndarray:
    """Token ids of `text`, encoded in line-aligned chunks (batched for subword tokenizers)."""
    chunks, start = [], 0
    while start < len(text):
        end = text.find("\n", start + chunk_chars)
        end = len(text) if end == -1 else end + 1
        chunks.append(text[start:end])
        start = end
    if hasattr(tokenizer, "encode_batch"):
        encoded = tokenizer.encode_batch(chunks)
    else:
        encoded = [tokenizer.encode(chunk) for chunk in chunks]
    return np.fromiter((i for ids in encoded for i in ids), dtype=np.int64)


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


def write_memmap(ids: np.ndarray, path, vocab_size: int) -> np.memmap:
    """Store ids on disk in the smallest dtype that holds the vocabulary; return the memmap."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(vocab_size)
    tmp = path.with_suffix(path.suffix + ".tmp")
    out = np.memmap(tmp, dtype=dtype, mode="w+", shape=(len(ids),))
    out[:] = ids
    out.flush()
    del out
    tmp.replace(path)
    return np.memmap(path, dtype=dtype, mode="r")


def open_memmap(path, vocab_size: int) -> np.memmap:
    return np.memmap(path, dtype=token_dtype(vocab_size), mode="r")


def split_ids(ids: np.ndarray, val_fraction: float):
    """First (1 - val_fraction) for training, the rest for validation; neither may be empty."""
    cut = int(len(ids) * (1 - val_fraction))
    if not 0 < cut < len(ids):
        raise UserError(f"the data has {len(ids)} token(s), too few to split into training and validation "
                        f"(val_fraction {val_fraction}); use more text")
    return ids[:cut], ids[cut:]


class LMBlocks:
    """Random contiguous blocks for causal LM training: targets are inputs shifted by one."""

    def __init__(self, splits: dict, block_size: int, batch_size: int):
        for name, ids in splits.items():
            if len(ids) <= block_size + 1:
                raise UserError(f"the {name} split has {len(ids)} tokens, too few for blocks of {block_size}; "
                                "use more text, a smaller block_size or a different val_fraction")
        self.splits, self.block_size, self.batch_size = splits, block_size, batch_size

    def sample(self, split: str, generator: torch.Generator) -> Batch:
        data = self.splits[split]
        starts = torch.randint(len(data) - self.block_size - 1, (self.batch_size,), generator=generator).tolist()
        rows = np.stack([data[s:s + self.block_size + 1] for s in starts]).astype(np.int64)
        rows = torch.from_numpy(rows)
        return Batch({"input_ids": rows[:, :-1], "targets": rows[:, 1:]},
                     torch.full((self.batch_size,), self.block_size))
