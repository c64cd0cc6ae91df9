"""Curation as passes over shards of the input, with global steps between them:

  split   (here)     input -> shards of `shard_docs` documents, each with its ordinal (stable id)
  hash    (workers)  normalised document digests, line/paragraph hashes
  dedup   (here)     exact duplicates (the lowest ordinal stays), boilerplate lines
  filter  (workers)  drop duplicates and boilerplate, run the filters, MinHash band keys
  near    (here)     LSH candidates -> true-Jaccard verification -> union-find; one per cluster
  write   (workers)  the documents left, as OUT/data/NNNNN.jsonl

Every step writes its result atomically into OUT/.work and is skipped when it is already there,
so a re-run continues where an interrupted one stopped. Everything is ordered by ordinal, so
the output does not depend on the engine, the number of workers or the order tasks finish in."""

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import UserError
from .config import Pipeline
from .engines import Engine
from .minhash import candidate_pairs, verified_clusters
from .reader import iter_documents
from .report import write_report
from .stages import (
    ShardTask,
    filter_shard,
    hash_shard,
    save_json,
    save_npz,
    shard_name,
    write_records,
    write_shard,
)
from .text import jaccard

CORPUS_FILE = "corpus.json"  # what data/corpus.py reads: the data files of a curated directory
REPORT_JSON = "report.json"


@dataclass
class Result:
    docs_in: int
    docs_out: int
    report: dict


def curate(source, out, pipeline: Pipeline, engine: Engine, log=None) -> Result:
    """Curate the documents under `source` into directory `out` (created or continued)."""
    out, log = Path(out), log or (lambda msg: print(msg, file=sys.stderr))
    work = out / ".work"
    for sub in ("shards", "hash", "filter"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    (out / "data").mkdir(exist_ok=True)
    shards, docs = split(source, work, pipeline)
    log(f"{docs} documents in {shards} shards, {engine.workers} worker(s); pipeline: {pipeline.describe()}")
    tasks = [ShardTask(str(work), i, pipeline) for i in range(shards)]
    if {"exact", "lines"} & set(pipeline.stages):
        engine.map(hash_shard, tasks, "hash")
        dedup(work, shards, pipeline)
    engine.map(filter_shard, tasks, "filter")
    near = near_duplicates(work, shards, pipeline) if "minhash" in pipeline.stages else None
    counts = engine.map(write_shard, tasks, "write")
    files = [f"data/{shard_name(i)}.jsonl" for i, count in enumerate(counts) if count]
    save_json(out / CORPUS_FILE, {"files": files, "text_field": "text"})
    kept = sum(counts)
    report = write_report(out, work, shards, docs, kept, pipeline, near)
    shutil.rmtree(work)
    return Result(docs, kept, report)


def split(source, work: Path, pipeline: Pipeline) -> tuple[int, int]:
    """Shards of the input in `work`/shards, unless a completed split is there -> (shards, documents)."""
    done = work / "split.json"
    if done.exists():
        saved = json.loads(done.read_text())
        return saved["shards"], saved["docs"]
    batch, shards, docs = [], 0, 0
    for doc in iter_documents(source, pipeline.text_field):
        batch.append((docs, doc.id, doc.text))
        docs += 1
        if len(batch) == pipeline.shard_docs:
            write_records(work / "shards" / f"{shard_name(shards)}.jsonl", batch)
            batch, shards = [], shards + 1
    if batch:
        write_records(work / "shards" / f"{shard_name(shards)}.jsonl", batch)
        shards += 1
    if docs == 0:
        raise UserError(f"input {source} holds no documents")
    save_json(done, {"shards": shards, "docs": docs})
    return shards, docs


def dedup(work: Path, shards: int, pipeline: Pipeline):
    """Exact duplicates and boilerplate from every shard's hashes -> `work`/dedup.npz."""
    target = work / "dedup.npz"
    if target.exists():
        return
    parts = [np.load(work / "hash" / f"{shard_name(i)}.npz") for i in range(shards)]
    ordinals = np.concatenate([p["ordinals"] for p in parts])
    digests = np.concatenate([p["digests"] for p in parts])
    drop = np.empty(0, dtype=np.int64)
    if "exact" in pipeline.stages:
        order = np.lexsort((ordinals, digests[:, 1], digests[:, 0]))
        ranked = digests[order]
        repeat = np.r_[False, np.all(ranked[1:] == ranked[:-1], axis=1)]
        drop = np.sort(ordinals[order][repeat])
    hashes = np.concatenate([p["line_hashes"] for p in parts])
    docs = np.concatenate([p["line_docs"] for p in parts])
    alive = ~np.isin(docs, drop)
    boiler_hashes, boiler_first = boilerplate(hashes[alive], docs[alive], pipeline)
    save_npz(target, exact_drop=drop, boiler_hashes=boiler_hashes, boiler_first=boiler_first)


def boilerplate(hashes: np.ndarray, docs: np.ndarray, pipeline: Pipeline) -> tuple[np.ndarray, np.ndarray]:
    """Sorted hashes of the lines found in at least lines.min_docs documents, and the first
    document (lowest ordinal) of each."""
    if "lines" not in pipeline.stages or len(hashes) == 0:
        return np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.int64)
    order = np.lexsort((docs, hashes))
    hashes, docs = hashes[order], docs[order]
    starts = np.flatnonzero(np.r_[True, hashes[1:] != hashes[:-1]])
    counts = np.diff(np.r_[starts, len(hashes)])
    common = starts[counts >= pipeline.settings["lines"].min_docs]
    return hashes[common], docs[common]


def near_duplicates(work: Path, shards: int, pipeline: Pipeline) -> dict:
    """LSH candidates over all band keys, verified by the true Jaccard of their shingle sets,
    clustered with union-find; every member of a cluster but its lowest ordinal goes."""
    target = work / "minhash.npz"
    summary_file = work / "minhash.json"
    if target.exists():
        return json.loads(summary_file.read_text())
    settings = pipeline.settings["minhash"]
    parts = [np.load(work / "filter" / f"{shard_name(i)}.npz") for i in range(shards)]
    shingles = [np.load(work / "filter" / f"{shard_name(i)}.shingles.npy", mmap_mode="r") for i in range(shards)]
    ordinals = np.concatenate([p["ordinals"] for p in parts])
    where = [(s, k) for s, p in enumerate(parts) for k in range(len(p["ordinals"]))]
    offsets = [p["offsets"] for p in parts]

    def shingle_set(i: int) -> np.ndarray:
        s, k = where[i]
        return np.asarray(shingles[s][offsets[s][k]:offsets[s][k + 1]])

    sizes = np.concatenate([np.diff(o) for o in offsets])
    keys = np.concatenate([p["keys"] for p in parts])
    with_shingles = np.flatnonzero(sizes > 0)  # a document without words has nothing to compare
    pairs = with_shingles[candidate_pairs(keys[with_shingles])] if len(with_shingles) else np.empty((0, 2), int)
    roots, verified, rejected = verified_clusters(pairs, len(ordinals),
                                                  lambda i, j: jaccard(shingle_set(i), shingle_set(j)), settings.threshold)
    duplicate = roots != np.arange(len(ordinals))
    drop = np.sort(ordinals[duplicate])
    examples = [{"kept": int(ordinals[i]), "removed": int(ordinals[j]), "jaccard": round(value, 4)}
                for i, j, value in verified[:5]]
    summary = {"candidate_pairs": len(pairs), "verified_pairs": len(verified), "rejected_pairs": rejected,
               "clusters": len(np.unique(roots[duplicate])), "removed": len(drop), "examples": examples}
    save_json(summary_file, summary)
    save_npz(target, drop=drop)
    return summary


def check_resumable(out: Path, source, pipeline: Pipeline, fingerprint: str):
    """Record what `out` curates; refuse to continue a curation of other input or settings."""
    settings = {"input": str(Path(source).resolve()), "input_fingerprint": fingerprint, "pipeline": pipeline.as_dict()}
    saved_file = out / "curate.json"
    if saved_file.exists():
        saved = json.loads(saved_file.read_text())
        if saved != settings:
            what = "input" if saved.get("pipeline") == settings["pipeline"] else "pipeline or settings"
            raise UserError(f"--out {out} holds a curation with a different {what}; use another --out, or --force "
                            "to start over there")
    else:
        out.mkdir(parents=True, exist_ok=True)
        save_json(saved_file, settings)


def is_complete(out: Path) -> bool:
    return (out / REPORT_JSON).exists() and not (out / ".work").exists()
