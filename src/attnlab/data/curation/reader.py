"""Streaming input: text files (one document each), JSONL (one document a line, its text in a
field) and gzip of these, a file or a folder of them; nothing is held but the current document."""

import gzip
import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ...errors import UserError
from ..corpus import jsonl_record


@dataclass
class Document:
    id: str  # where it came from: the JSONL "id" field, else file (and line)
    text: str


def input_files(path: Path) -> list[Path]:
    if not path.exists():
        raise UserError(f"input {path} does not exist")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in
                                                                           p.relative_to(path).parts))
    if not files:
        raise UserError(f"input folder {path} has no files")
    return files


def input_fingerprint(path: Path) -> str:
    """Changes when a file is added, removed, resized or touched."""
    digest = hashlib.sha256()
    for file in input_files(path):
        stat = file.stat()
        digest.update(f"{file.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def is_jsonl(file: Path) -> bool:
    return file.name.removesuffix(".gz").endswith((".jsonl", ".ndjson"))


def open_text(file: Path) -> io.TextIOBase:
    if file.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(file, "rb"), encoding="utf-8")
    return open(file, encoding="utf-8")


def iter_documents(path, text_field: str = "text") -> Iterator[Document]:
    """Every document under `path`, in a stable order (files sorted, lines in order)."""
    root = Path(path)
    for file in input_files(root):
        name = str(file.relative_to(root)) if root.is_dir() else file.name
        try:
            with open_text(file) as handle:
                if is_jsonl(file):
                    yield from jsonl_documents(handle, name, text_field)
                else:
                    yield Document(name, handle.read())
        except UnicodeDecodeError as err:
            raise UserError(f"{file} is not UTF-8 text (bad byte at offset {err.start}); convert it to UTF-8") from None
        except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
            raise UserError(f"cannot read {file}: {err}") from None


def jsonl_documents(handle, name: str, text_field: str) -> Iterator[Document]:
    for number, line in enumerate(handle, 1):
        if not line.strip():
            continue
        record = jsonl_record(line, name, number, text_field, fix=" (set --text-field)")
        yield Document(str(record.get("id", f"{name}:{number}")), record[text_field])
