"""Semantic search over the lines or paragraphs of a text file.

The index (unit vectors of every passage) is saved beside the file and reused while it is
still right: it records the SHA-256 of the file's bytes, the passage unit and the model, and
is rebuilt when any of them changes. It is written to a temporary name and renamed, so an
interrupted build never leaves a broken index behind.
"""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError

UNITS = ("lines", "paragraphs")


def split_passages(text: str, unit: str) -> list:
    """-> [(first line number (1-based), passage text)] of the non-blank lines or paragraphs."""
    if unit not in UNITS:
        raise UserError(f"unknown passage unit {unit!r}; choose one of {', '.join(UNITS)}")
    passages, current, start = [], [], 0
    for number, line in enumerate(text.splitlines(), start=1):
        if unit == "lines":
            if line.strip():
                passages.append((number, line.strip()))
            continue
        if line.strip():
            start = start or number
            current.append(line.strip())
        elif current:
            passages.append((start, " ".join(current)))
            current, start = [], 0
    if current:
        passages.append((start, " ".join(current)))
    return passages


class SearchIndex:
    def __init__(self, vectors: torch.Tensor, passages: list, key: dict):
        self.vectors, self.passages, self.key = vectors, passages, key  # vectors (N, C), unit length

    @classmethod
    def build(cls, text: str, unit: str, encoder, key: dict):
        passages = split_passages(text, unit)
        if not passages:
            raise UserError("the file has no text to index")
        return cls(encoder.encode([p for _, p in passages], quiet=False), passages, key)

    def fits(self, dim: int) -> bool:
        """Whether the vectors are one of `dim` per passage (a damaged or edited index is not)."""
        return tuple(self.vectors.shape) == (len(self.passages), dim)

    def search(self, query_vectors: torch.Tensor, top_k: int) -> list:
        """(Q, C) unit vectors -> per query [(cosine score, line number, passage)], best first."""
        scores = query_vectors @ self.vectors.T  # (Q, N)
        best = scores.topk(min(top_k, len(self.passages)), dim=-1)
        return [[(float(s), *self.passages[i]) for s, i in zip(row_scores.tolist(), row_index.tolist())]
                for row_scores, row_index in zip(best.values, best.indices)]

    def save(self, path: Path):
        path = Path(path)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}.npz")
        meta = json.dumps({"key": self.key, "passages": self.passages})
        np.savez(tmp, vectors=self.vectors.numpy(), meta=np.array(meta))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path):
        """The saved index, or None when it is missing or unreadable (it is rebuilt then)."""
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                vectors = torch.from_numpy(data["vectors"].copy())
        except (OSError, ValueError, KeyError):
            return None
        return cls(vectors, [tuple(p) for p in meta["passages"]], meta["key"])


def index_key(raw_text: bytes, unit: str, model_id: str, max_length: int) -> dict:
    return {"sha256": hashlib.sha256(raw_text).hexdigest(), "unit": unit, "model": model_id,
            "max_length": max_length}


def open_index(text_path: Path, index_path: Path, unit: str, encoder, model_id: str):
    """-> (index, rebuilt: bool). Reuses the saved index when its key still matches the file."""
    raw = Path(text_path).read_bytes()
    key = index_key(raw, unit, model_id, encoder.max_length)
    index = SearchIndex.load(index_path) if Path(index_path).exists() else None
    if index is not None and index.key == key and index.fits(encoder.dim):
        return index, False
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{text_path} is not UTF-8 text (bad byte at offset {err.start})") from None
    index = SearchIndex.build(text, unit, encoder, key)
    index.save(index_path)
    return index, True
