"""curate: deduplicate and filter a text corpus for pretraining (exact and near-duplicates,
boilerplate lines, Gopher and C4 rules, language, blocklist); the output directory is what
`attnlab train --data` reads, with report.md and report.json beside it."""

import json
import shutil
import sys
from pathlib import Path

from ..data.curation import DEFAULT_PIPELINE, curate, make_engine, parse_pipeline
from ..data.curation.pipeline import check_resumable, is_complete
from ..data.curation.reader import input_fingerprint
from ..errors import UserError
from .common import FORCE_HELP, claim_output, fresh_output, mark_output, print_json

VERB = "curate"


def register(sub):
    p = sub.add_parser(VERB, help="deduplicate and filter text for pretraining (exact/near-duplicates, quality, "
                       "language, blocklist); a re-run with the same --out continues where it stopped")
    p.add_argument("input", metavar="IN", help="text file, JSONL (a text field) or a folder of them; .gz too")
    p.add_argument("overrides", nargs="*", metavar="stage.key=value",
                   help="stage settings, e.g. minhash.bands=20 gopher.min_words=20 langid.languages=en,de")
    p.add_argument("--out", required=True, help="output directory: data/*.jsonl, corpus.json, report.md, report.json")
    p.add_argument("--pipeline", default=DEFAULT_PIPELINE,
                   help=f"comma-separated stages, in this order (default: {DEFAULT_PIPELINE})")
    p.add_argument("--engine", choices=("processes", "dask"), default="processes",
                   help="local worker processes (default), or Dask: a local cluster, or --scheduler")
    p.add_argument("--workers", type=int, help="worker processes (default: every core; 1 runs in this process)")
    p.add_argument("--scheduler", help="address of a running Dask scheduler (with --engine dask); the workers must "
                   "see IN and --out at the same paths")
    p.add_argument("--shard-docs", type=int, default=1000, help="documents per shard, the unit of work and of resume")
    p.add_argument("--text-field", default="text", help="the JSONL field holding the text (default: text)")
    p.add_argument("--force", action="store_true", help=FORCE_HELP)
    p.set_defaults(run=run)


def run(args):
    pipeline = parse_pipeline(args.pipeline, args.overrides, args.shard_docs, args.text_field)
    fingerprint = input_fingerprint(Path(args.input))
    out = Path(args.out)
    if args.force and claim_output(out, VERB, force=True):
        with fresh_output(out, VERB, force=True) as work:
            result = run_in(args, work, pipeline, fingerprint)
    elif claim_output(out, VERB):  # an earlier curation here: continue it (or refuse other settings)
        result = run_in(args, out, pipeline, fingerprint)
    else:
        result = run_new(args, out, pipeline, fingerprint)
    print_json({"out": str(out), "docs_in": result["docs_in"], "docs_out": result["docs_out"],
                "removed": {row["stage"]: row["removed"] for row in result["stages"]}})


def run_new(args, out: Path, pipeline, fingerprint: str) -> dict:
    """A curation into an absent or empty `out`: a user error (bad input) leaves it as it was."""
    existed = out.exists()
    mark_output(out, VERB)
    try:
        return run_in(args, out, pipeline, fingerprint)
    except UserError:
        for path in out.iterdir() if existed else [out]:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        raise


def run_in(args, out: Path, pipeline, fingerprint: str) -> dict:
    check_resumable(out, args.input, pipeline, fingerprint)
    if is_complete(out):
        print(f"{out} already holds this curation; nothing to do", file=sys.stderr)
        return json.loads((out / "report.json").read_text())
    engine = make_engine(args.engine, args.workers, args.scheduler)
    try:
        return curate(args.input, out, pipeline, engine).report
    finally:
        engine.close()
