"""search: the passages of a text file closest in meaning to a query, by an encoder's sentence vectors;
with a dual encoder (CLIP), across modalities: text (or, with --query-images, image) queries over a
folder of images or over the captions of a text file."""

import json
import sys
from pathlib import Path

from ..errors import UserError
from ..evaluation.retrieval import embed_images, embed_texts
from ..inference.search import UNITS, open_index, split_passages
from .embed import encoder_arguments, load_dual_encoder, sentence_encoder

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".npy")


def register(sub):
    p = sub.add_parser("search", help="the passages of a text file closest in meaning to a query")
    p.add_argument("file", help="text file to search; its index is saved beside it and reused until it changes; "
                   "with a dual encoder also a folder of images")
    p.add_argument("query", nargs="+", help="one or more queries")
    p.add_argument("--query-images", action="store_true", help="dual encoders (CLIP): the queries are image files")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--unit", choices=UNITS, default="lines", help="passages are lines or blank-line paragraphs")
    p.add_argument("--index", help="where to keep the index (default: FILE.attnlab-index.npz)")
    p.add_argument("--json", action="store_true", help="one JSON object per query")
    encoder_arguments(p)
    p.set_defaults(run=search)


def search(args):
    path = Path(args.file)
    if args.top_k < 1 or args.batch_size < 1:
        raise UserError("--top-k and --batch-size must be >= 1")
    dual = load_dual_encoder(args.model)
    if dual is not None:
        return search_across(args, path, *dual)
    if args.query_images:
        raise UserError("--query-images needs a dual encoder (a CLIP checkpoint) as --model")
    if not path.is_file():
        raise UserError(f"file {path} does not exist")
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


def search_across(args, path: Path, model, processor):
    """A dual encoder's search: text or image queries over the images of a folder or the lines (or
    paragraphs) of a text file; scores are cosine similarities. Nothing is cached."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise UserError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)}) to search")
        targets = [(None, str(f)) for f in files]
        vectors = embed_images(model, processor, [processor.read(f) for f in files], args.batch_size)
    elif path.is_file():
        targets = split_passages(path.read_text(encoding="utf-8"), args.unit)
        if not targets:
            raise UserError(f"{path} has no text to search")
        vectors = embed_texts(model, processor, [text for _, text in targets], args.batch_size)
    else:
        raise UserError(f"{path} does not exist: search a folder of images or a text file of captions")
    if args.query_images:
        queries = embed_images(model, processor, [processor.read(q) for q in args.query], args.batch_size)
    else:
        queries = embed_texts(model, processor, args.query, args.batch_size)
    scores = queries @ vectors.T  # (Q, N)
    top = scores.topk(min(args.top_k, len(targets)), dim=1)
    for query, values, indices in zip(args.query, top.values.tolist(), top.indices.tolist()):
        hits = [(score, *targets[i]) for score, i in zip(values, indices)]
        if args.json:
            results = [{"score": round(s, 6), **({"image": t} if n is None else {"line": n, "passage": t})}
                       for s, n, t in hits]
            print(json.dumps({"query": query, "results": results}, ensure_ascii=False))
            continue
        print(f"query: {query}")
        for score, number, target in hits:
            print(f"  {score:.4f}  {target if number is None else f'line {number}: {target}'}")
