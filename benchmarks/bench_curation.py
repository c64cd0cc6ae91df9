"""Issue 22: data curation measured.

  quality  near-duplicate recall and precision on an edited set, against exact Jaccard computed
           by brute force on a sample, for several LSH shapes
  speed    one core: attnlab curate beside datatrove (MinHash dedup + Gopher + C4 filters) on the
           same ~1 kB documents, interleaved rounds, medians, the ratio, and the overlap of what
           each removed; attnlab's full pipeline alone
  scaling  1 and 2 local worker processes, and a Dask local cluster of 2

Run each under the benchmark lock, one thread:
  OMP_NUM_THREADS=1 flock /tmp/attnlab-bench.lock python benchmarks/bench_curation.py quality
"""

import argparse
import itertools
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from attnlab.data.curation import (MinHasher, band_keys, candidate_pairs, curate, jaccard, lsh_threshold, make_engine,
                                   parse_pipeline, shingle_hashes, verified_clusters)
from attnlab.data.curation.synthetic import near_duplicate_corpus
from attnlab.data.curation.text import WORD

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
RESULTS = ROOT / "benchmarks" / "results"
FRACTIONS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.12, 0.2, 0.3)


def exact_shingles(text: str, n: int) -> set:
    """The word n-grams themselves (strings, no hashing): the ground truth's sets."""
    words = WORD.findall(text.lower())
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def true_pairs(docs: list, n: int, threshold: float) -> dict:
    """{(i, j): Jaccard} for every pair of `docs` at or above `threshold`, by brute force."""
    sets = [exact_shingles(d["text"], n) for d in docs]
    found = {}
    for i, j in itertools.combinations(range(len(sets)), 2):
        a, b = sets[i], sets[j]
        common = len(a & b)
        value = common / (len(a) + len(b) - common) if a or b else 1.0
        if value >= threshold:
            found[(i, j)] = value
    return found


def quality(args):
    docs = near_duplicate_corpus(SHAKESPEARE.read_text(), args.bases, FRACTIONS, seed=args.seed)
    sample = sorted(random.Random(args.seed).sample(range(len(docs)), min(args.sample, len(docs))))
    docs = [docs[i] for i in sample]
    start = time.perf_counter()
    truth = true_pairs(docs, args.ngram, args.threshold)
    brute = time.perf_counter() - start
    shingles = [shingle_hashes(d["text"], args.ngram) for d in docs]
    rows = []
    for bands, rows_per_band in args.shapes:
        sig = MinHasher(bands * rows_per_band, seed=1).signatures(shingles)
        candidates = candidate_pairs(band_keys(sig, bands, rows_per_band))
        roots, verified, rejected = verified_clusters(candidates, len(docs), lambda i, j: jaccard(shingles[i], shingles[j]),
                                                      args.threshold)
        candidate_set = {tuple(p) for p in candidates.tolist()}
        edges = {(i, j) for i, j, _ in verified}
        same = {p for p in truth if roots[p[0]] == roots[p[1]]}
        members = {}
        for i, root in enumerate(roots.tolist()):
            members.setdefault(root, []).append(i)
        cluster_pairs = [p for m in members.values() for p in itertools.combinations(m, 2)]
        rows.append({
            "bands": bands, "rows": rows_per_band, "num_perm": bands * rows_per_band,
            "lsh_threshold": round(lsh_threshold(bands, rows_per_band), 3),
            "true_pairs": len(truth), "candidates": len(candidate_set), "verified": len(edges), "rejected": rejected,
            "candidate_recall": len(candidate_set & truth.keys()) / len(truth),
            "candidate_precision": len(candidate_set & truth.keys()) / max(1, len(candidate_set)),
            "recall": len(same) / len(truth),  # true pairs that end in one cluster: one of them stays
            "precision": len(edges & truth.keys()) / max(1, len(edges)),  # verified pairs that are true
            "cluster_pair_precision": sum(p in truth for p in cluster_pairs) / max(1, len(cluster_pairs)),
            "removed": int((roots != np.arange(len(docs))).sum()),
        })
    report = {"docs": len(docs), "bases": args.bases, "fractions": FRACTIONS, "ngram": args.ngram,
              "threshold": args.threshold, "brute_force_seconds": round(brute, 1), "shapes": rows}
    save("curation_quality.json", report)
    print(f"{len(docs)} documents (a sample of {args.bases} passages x {len(FRACTIONS) + 1} versions), "
          f"{len(truth)} pairs with Jaccard >= {args.threshold} by brute force ({brute:.1f} s)")
    print("| bands x rows | LSH threshold | candidates | candidate recall | candidate precision | verified | "
          "recall | precision (verified) | cluster-pair precision |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['bands']} x {r['rows']} | {r['lsh_threshold']} | {r['candidates']} | {r['candidate_recall']:.4f} | "
              f"{r['candidate_precision']:.4f} | {r['verified']} | {r['recall']:.4f} | {r['precision']:.4f} | "
              f"{r['cluster_pair_precision']:.4f} |")


def write_corpus(docs: list, path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps({"id": d["id"], "text": d["text"]}) + "\n" for d in docs)
    return path.stat().st_size


def kept_ids(folder: Path) -> set:
    ids = set()
    for file in folder.rglob("*.jsonl*"):
        opener = __import__("gzip").open if file.suffix == ".gz" else open
        with opener(file, "rt", encoding="utf-8") as handle:
            ids.update(json.loads(line)["id"] for line in handle)
    return ids


def run_attnlab(source: Path, out: Path, spec: str, workers: int = 1, engine: str = "processes") -> set:
    shutil.rmtree(out, ignore_errors=True)
    runner = make_engine(engine, workers)
    try:
        curate(source, out, parse_pipeline(spec, shard_docs=1000), runner, log=lambda _: None)
    finally:
        runner.close()
    return kept_ids(out / "data")


def run_datatrove(source: Path, work: Path, stages: set) -> set:
    """datatrove's MinHash deduplication (5-grams, 14 buckets x 8 hashes: the same shape) after its
    Gopher and C4 filters, one task, one worker, in this process."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter
    from datatrove.pipeline.dedup import MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig

    shutil.rmtree(work, ignore_errors=True)
    # sha1: the xxhash 4 that spaCy's dependencies bring refuses the str that datatrove 0.10 passes it
    config = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8, hash_config=HashConfig(hash_fc="sha1"))
    logs = str(work / "logs")

    def execute(name, pipeline, tasks=1):
        LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=1, logging_dir=f"{logs}/{name}").run()

    filters = [f for stage, f in (("gopher", GopherQualityFilter()), ("c4", C4QualityFilter())) if stage in stages]
    reader = JsonlReader(str(source.parent), glob_pattern=source.name)
    if "minhash" not in stages:
        execute("filter", [reader, *filters, JsonlWriter(str(work / "out"), compression=None)])
        return kept_ids(work / "out")
    execute("filter", [reader, *filters, JsonlWriter(str(work / "filtered"), compression=None)])
    execute("signatures", [JsonlReader(str(work / "filtered")), MinhashDedupSignature(str(work / "sigs"), config)])
    execute("buckets", [MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=config)],
            tasks=config.num_buckets)
    execute("clusters", [MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=config)])
    execute("dedup", [JsonlReader(str(work / "filtered")), MinhashDedupFilter(str(work / "remove")),
                      JsonlWriter(str(work / "out"), compression=None)])
    return kept_ids(work / "out")


def overlap(ids: set, ours: set, theirs: set) -> dict:
    a, b = ids - ours, ids - theirs
    return {"attnlab_removed": len(a), "datatrove_removed": len(b), "both": len(a & b),
            "jaccard": len(a & b) / max(1, len(a | b))}


def speed(args):
    from loguru import logger

    logger.remove()  # datatrove logs every step to stderr
    docs = near_duplicate_corpus(SHAKESPEARE.read_text(), args.bases, (0.01, 0.03, 0.1, 0.3), seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = tmp / "in" / "docs.jsonl"
        size = write_corpus(docs, source)
        ids = {d["id"] for d in docs}
        spec, stages = "gopher,c4,minhash", {"gopher", "c4", "minhash"}
        runners = {"attnlab": lambda: run_attnlab(source, tmp / "ours", spec),
                   "datatrove": lambda: run_datatrove(source, tmp / "theirs", stages)}
        seconds, kept = {name: [] for name in runners}, {}
        for _ in range(args.rounds):
            for name, run in runners.items():
                start = time.perf_counter()
                kept[name] = run()
                seconds[name].append(time.perf_counter() - start)
        per_stage = {}
        for stage in ("gopher", "c4", "minhash"):
            per_stage[stage] = overlap(ids, run_attnlab(source, tmp / "ours", stage),
                                       run_datatrove(source, tmp / "theirs", {stage}))
        full = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            run_attnlab(source, tmp / "ours", "exact,lines,gopher,c4,langid,blocklist,minhash")
            full.append(time.perf_counter() - start)
    med = {name: statistics.median(values) for name, values in seconds.items()}
    ratios = [t / o for o, t in zip(seconds["attnlab"], seconds["datatrove"])]
    report = {"docs": len(docs), "mb": size / 1e6, "mean_doc_bytes": size / len(docs), "rounds": args.rounds,
              "seconds": seconds, "median_seconds": med, "datatrove_over_attnlab": statistics.median(ratios),
              "ratio_range": [min(ratios), max(ratios)],
              "docs_per_s": {name: len(docs) / t for name, t in med.items()},
              "mb_per_s": {name: size / 1e6 / t for name, t in med.items()},
              "removed_overlap": overlap(ids, kept["attnlab"], kept["datatrove"]), "per_stage_overlap": per_stage,
              "full_pipeline_median_seconds": statistics.median(full),
              "full_pipeline_docs_per_s": len(docs) / statistics.median(full),
              "full_pipeline_mb_per_s": size / 1e6 / statistics.median(full)}
    save("curation_speed.json", report)
    print(json.dumps(report, indent=2))


def scaling(args):
    docs = near_duplicate_corpus(SHAKESPEARE.read_text(), args.bases, (0.01, 0.03, 0.1, 0.3), seed=args.seed)
    spec = "exact,lines,gopher,c4,langid,blocklist,minhash"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = tmp / "in" / "docs.jsonl"
        size = write_corpus(docs, source)
        setups = {"1 process": ("processes", 1), "2 processes": ("processes", 2), "dask, 2 workers": ("dask", 2)}
        seconds, kept = {name: [] for name in setups}, {}
        for _ in range(args.rounds):
            for name, (engine, workers) in setups.items():
                start = time.perf_counter()
                kept[name] = run_attnlab(source, tmp / "out", spec, workers, engine)
                seconds[name].append(time.perf_counter() - start)
    med = {name: statistics.median(values) for name, values in seconds.items()}
    report = {"docs": len(docs), "mb": size / 1e6, "rounds": args.rounds, "seconds": seconds, "median_seconds": med,
              "speedup_2_processes": med["1 process"] / med["2 processes"],
              "dask_overhead": med["dask, 2 workers"] / med["2 processes"] - 1,
              "same_output": all(k == kept["1 process"] for k in kept.values())}
    save("curation_scaling.json", report)
    print(json.dumps(report, indent=2))


def save(name: str, report: dict):
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / name).write_text(json.dumps(report, indent=2) + "\n")


def shape(text: str) -> tuple[int, int]:
    bands, rows = text.split("x")
    return int(bands), int(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--bases", type=int, default=300)
    q.add_argument("--sample", type=int, default=1500)
    q.add_argument("--ngram", type=int, default=5)
    q.add_argument("--threshold", type=float, default=0.8)
    q.add_argument("--shapes", type=shape, nargs="+", default=[(14, 8), (16, 7), (20, 5), (9, 13)])
    for name, bases in (("speed", 1000), ("scaling", 1100)):
        p = sub.add_parser(name)
        p.add_argument("--bases", type=int, default=bases)
        p.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    {"quality": quality, "speed": speed, "scaling": scaling}[args.what](args)


if __name__ == "__main__":
    sys.exit(main())
