"""The per-shard work of each pass, run by the engine's workers. Each function reads one shard of
the work directory and writes its results there under a temporary name, then renames them, so a
shard's output exists only when complete (what a resumed run skips)."""

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .blocklist import BlocklistFilter
from .config import FILTERS, Pipeline
from .filters import C4Filter, GopherFilter
from .langid import LangIdFilter
from .minhash import MinHasher, band_keys
from .text import digest128, hash64, normalize, shingle_hashes

PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
SNIPPET = 160
EXAMPLES = 3  # removed documents kept per stage and shard as examples for the report
FILTER_CLASSES = {"gopher": GopherFilter, "c4": C4Filter, "langid": LangIdFilter, "blocklist": BlocklistFilter}


@dataclass
class ShardTask:
    work: str  # the work directory
    index: int
    pipeline: Pipeline


def shard_name(index: int) -> str:
    return f"{index:05d}"


def read_records(path: Path) -> Iterator[tuple[int, str, str]]:
    """(ordinal, source id, text) of each document of a shard file."""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            yield tuple(json.loads(line))


def write_records(path: Path, records):
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    tmp.replace(path)


def save_npz(path: Path, **arrays):
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def save_json(path: Path, data):
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, ensure_ascii=False))
    tmp.replace(path)


def split_units(text: str, unit: str) -> list[str]:
    return PARAGRAPH_BREAK.split(text) if unit == "paragraph" else text.splitlines()


def join_units(units: list[str], unit: str) -> str:
    return ("\n\n" if unit == "paragraph" else "\n").join(units)


def unit_hash(unit: str, min_chars: int) -> int | None:
    """The hash a line or paragraph is counted under, or None when too short to count."""
    if len(unit) < min_chars:  # normalising never lengthens a line by much: skip the clearly short ones
        return None
    norm = normalize(unit)
    return hash64(norm) if len(norm) >= min_chars else None


# ---- pass 1: hashes for exact deduplication and boilerplate --------------------------------

def hash_shard(task: ShardTask) -> int:
    work, name = Path(task.work), shard_name(task.index)
    target = work / "hash" / f"{name}.npz"
    if target.exists():
        return 0
    lines = task.pipeline.settings.get("lines")
    ordinals, digests, line_hashes, line_docs = [], [], [], []
    for ordinal, _, text in read_records(work / "shards" / f"{name}.jsonl"):
        ordinals.append(ordinal)
        digests.append(digest128(normalize(text)))
        if lines is not None:
            found = {h for u in split_units(text, lines.unit) if (h := unit_hash(u, lines.min_chars)) is not None}
            line_hashes.extend(sorted(found))
            line_docs.extend([ordinal] * len(found))
    save_npz(target, ordinals=np.array(ordinals, dtype=np.int64), digests=np.array(digests, dtype=np.uint64).reshape(-1, 2),
             line_hashes=np.array(line_hashes, dtype=np.uint64), line_docs=np.array(line_docs, dtype=np.int64))
    return len(ordinals)


# ---- pass 2: drop exact duplicates and boilerplate, filter, sign for near-duplicates -------

class Removed:
    """What one shard's stages removed: every (ordinal, stage, rule), and a few examples."""

    def __init__(self):
        self.rows, self.examples, self.chars = [], {}, {}

    def add(self, ordinal: int, source: str, stage: str, rule: str, text: str):
        self.rows.append([ordinal, stage, rule])
        examples = self.examples.setdefault(stage, [])
        if len(examples) < EXAMPLES:
            examples.append({"id": source, "rule": rule, "text": text[:SNIPPET]})

    def trimmed(self, stage: str, before: str, after: str):
        self.chars[stage] = self.chars.get(stage, 0) + len(before) - len(after)

    def as_dict(self) -> dict:
        return {"removed": self.rows, "examples": self.examples, "chars_removed": self.chars}


def filter_shard(task: ShardTask) -> int:
    work, name, pipeline = Path(task.work), shard_name(task.index), task.pipeline
    target = work / "filter" / f"{name}.json"
    if target.exists():
        return 0
    dedup = np.load(work / "dedup.npz") if (work / "dedup.npz").exists() else None
    exact_drop = set(dedup["exact_drop"].tolist()) if dedup is not None else set()
    boiler = dict(zip(dedup["boiler_hashes"].tolist(), dedup["boiler_first"].tolist())) if dedup is not None else {}
    filters = [(stage, FILTER_CLASSES[stage](pipeline.settings[stage])) for stage in pipeline.stages if stage in FILTERS]
    removed, kept = Removed(), []
    for ordinal, source, text in read_records(work / "shards" / f"{name}.jsonl"):
        if ordinal in exact_drop:
            removed.add(ordinal, source, "exact", "duplicate", text)
            continue
        if "lines" in pipeline.stages:
            stripped = strip_boilerplate(text, ordinal, boiler, pipeline.settings["lines"])
            removed.trimmed("lines", text, stripped)
            text = stripped
        for stage, keep in filters:
            after, rule = keep(text)
            if rule is not None:
                removed.add(ordinal, source, stage, rule, text)
                break
            removed.trimmed(stage, text, after)
            text = after
        else:
            kept.append((ordinal, source, text))
    if "minhash" in pipeline.stages:
        sign_shard(work / "filter" / name, kept, pipeline.settings["minhash"])
    write_records(work / "filter" / f"{name}.jsonl", kept)
    save_json(target, removed.as_dict())
    return len(kept)


def strip_boilerplate(text: str, ordinal: int, boiler: dict, settings) -> str:
    """`text` without the lines (paragraphs) that are boilerplate ({hash: first document}) first
    seen in another document."""
    kept = [unit for unit in split_units(text, settings.unit)
            if boiler.get(unit_hash(unit, settings.min_chars), ordinal) == ordinal]
    return join_units(kept, settings.unit)


def sign_shard(prefix: Path, kept: list, settings):
    """Band keys and shingle hashes of the kept documents: `prefix`.npz and `prefix`.shingles.npy."""
    shingles = [shingle_hashes(text, settings.ngram) for _, _, text in kept]
    sig = MinHasher(settings.num_perm, settings.seed).signatures(shingles)
    lengths = np.array([len(s) for s in shingles], dtype=np.int64)
    flat = np.concatenate(shingles) if shingles else np.empty(0, dtype=np.uint64)
    tmp = prefix.with_name(prefix.name + f".shingles.tmp-{os.getpid()}.npy")
    np.save(tmp, flat)
    tmp.replace(prefix.with_name(prefix.name + ".shingles.npy"))
    save_npz(prefix.with_name(prefix.name + ".npz"), ordinals=np.array([k[0] for k in kept], dtype=np.int64),
             keys=band_keys(sig, settings.bands, settings.rows), offsets=np.r_[0, np.cumsum(lengths)])


# ---- pass 3: write what is left --------------------------------------------------------------

def write_shard(task: ShardTask) -> int:
    work, name = Path(task.work), shard_name(task.index)
    target = work.parent / "data" / f"{name}.jsonl"
    if target.exists():
        with open(target, encoding="utf-8") as done:
            return sum(1 for _ in done)
    drop = set(np.load(work / "minhash.npz")["drop"].tolist()) if (work / "minhash.npz").exists() else set()
    kept = [{"id": source, "text": text} for ordinal, source, text in read_records(work / "filter" / f"{name}.jsonl")
            if ordinal not in drop]
    write_records(target, kept)
    return len(kept)
