"""search: the passages of a text file closest in meaning to a query, by an encoder's sentence vectors."""

import json
import sys
from pathlib import Path

from ..errors import UserError
from ..inference.search import UNITS, open_index
from .embed import encoder_arguments, sentence_encoder


def register(sub):
    p = sub.add_parser("search", help="the passages of a text file closest in meaning to a query")
    p.add_argument("file", help="text file to search; its index is saved beside it and reused until it changes")
    p.add_argument("query", nargs="+", help="one or more queries")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--unit", choices=UNITS, default="lines", help="passages are lines or blank-line paragraphs")
    p.add_argument("--index", help="where to keep the index (default: FILE.attnlab-index.npz)")
    p.add_argument("--json", action="store_true", help="one JSON object per query")
    encoder_arguments(p)
    p.set_defaults(run=search)


def search(args):
    path = Path(args.file)
    if not path.is_file():
        raise UserError(f"file {path} does not exist")
    if args.top_k < 1:
        raise UserError("--top-k must be >= 1")
    encoder, model_id = sentence_encoder(args)
    index_path = Path(args.index) if args.index else path.with_name(path.name + ".attnlab-index.npz")
    index, rebuilt = open_index(path, index_path, args.unit, encoder, model_id)
    print(f"{'built' if rebuilt else 'reused'} index {index_path} ({len(index.passages)} {args.unit})", file=sys.stderr)
    for query, hits in zip(args.query, index.search(encoder.encode(args.query), args.top_k)):
        if args.json:
            results = [{"score": round(s, 6), "line": n, "passage": p} for s, n, p in hits]
            print(json.dumps({"query": query, "results": results}, ensure_ascii=False))
            continue
        print(f"query: {query}")
        for score, number, passage in hits:
            print(f"  {score:.4f}  line {number}: {passage}")
