"""embed, search, convert: sentence encoders and Hugging Face checkpoints on the command line."""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from ..checkpoint import load_checkpoint, save_checkpoint
from ..errors import UserError
from ..inference.embeddings import SentenceEncoder
from ..inference.search import UNITS, open_index
from ..interop import export_hf, import_hf, minilm_path, read_hf_config
from ..models.base import ENCODER, families_of_kind
from .common import print_json, resolve_checkpoint

MODEL_HELP = ("an attnlab checkpoint or run directory, a Hugging Face directory, or 'minilm' for the bundled "
              "all-MiniLM-L6-v2 (default)")


def register(sub):
    p = sub.add_parser("embed", help="sentence embeddings (mean-pooled, L2-normalised) of texts, one per line")
    p.add_argument("input", nargs="?", help="text file, one text per line; blank lines are skipped (default: stdin)")
    p.add_argument("--out", help="FILE.npy (a float32 array) or FILE.jsonl; default: JSON lines on stdout")
    _encoder_arguments(p)
    p.set_defaults(run=embed)

    p = sub.add_parser("search", help="the passages of a text file closest in meaning to a query")
    p.add_argument("file", help="text file to search; its index is saved beside it and reused until it changes")
    p.add_argument("query", nargs="+", help="one or more queries")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--unit", choices=UNITS, default="lines", help="passages are lines or blank-line paragraphs")
    p.add_argument("--index", help="where to keep the index (default: FILE.attnlab-index.npz)")
    p.add_argument("--json", action="store_true", help="one JSON object per query")
    _encoder_arguments(p)
    p.set_defaults(run=search)

    p = sub.add_parser("convert", help="import a Hugging Face checkpoint into attnlab, or export one back")
    p.add_argument("direction", choices=("import", "export"))
    p.add_argument("source", help="import: a Hugging Face directory or 'minilm'; export: an attnlab checkpoint")
    p.add_argument("out", help="new output directory")
    p.set_defaults(run=convert)


def _encoder_arguments(p):
    p.add_argument("--model", default="minilm", help=MODEL_HELP)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=256, help="tokens per text; longer texts are truncated")


def _source(name) -> Path:
    return minilm_path() if name == "minilm" else Path(name)


def load_encoder(name):
    """-> (encoder model, tokenizer, an id of the model for index keys)."""
    path = _source(name)
    config_path = path / "config.json"
    if path.is_dir() and config_path.is_file() and "model_type" in read_hf_config(path):
        model, tokenizer = import_hf(path)
    else:
        path = resolve_checkpoint(path)
        config_path = path / "config.json"
        model, tokenizer = load_checkpoint(path, families=families_of_kind(ENCODER))
    if tokenizer is None or not hasattr(tokenizer, "batch_encode"):
        raise UserError(f"{path} has no subword tokenizer (tokenizer.json or vocab.txt); an encoder needs one")
    weights = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin"))
    stamp = [config_path.read_text()] + [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in weights]
    model_id = f"{path.resolve()}#{hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:16]}"
    return model, tokenizer, model_id


def _encoder(args):
    if args.batch_size < 1 or args.max_length < 3:
        raise UserError("--batch-size must be >= 1 and --max-length >= 3")
    model, tokenizer, model_id = load_encoder(args.model)
    return SentenceEncoder(model, tokenizer, max_length=args.max_length, batch_size=args.batch_size), model_id


def _read_texts(path) -> list:
    if path is None:
        raw = sys.stdin.read()
    else:
        if not Path(path).is_file():
            raise UserError(f"input file {path} does not exist")
        try:
            raw = Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise UserError(f"{path} is not UTF-8 text (bad byte at offset {err.start})") from None
    texts = [line.strip() for line in raw.splitlines() if line.strip()]
    if not texts:
        raise UserError("no texts to embed: give a file or stdin with one text per line")
    return texts


def embed(args):
    out = Path(args.out) if args.out else None
    if out is not None and out.suffix not in (".npy", ".jsonl"):
        raise UserError(f"--out {out} must end in .npy or .jsonl")
    texts = _read_texts(args.input)
    encoder, _ = _encoder(args)
    vectors = encoder.encode(texts).numpy().astype(np.float32)
    if out is not None and out.suffix == ".npy":
        np.save(out, vectors)
    else:
        lines = (json.dumps({"text": t, "embedding": v.tolist()}, ensure_ascii=False) for t, v in zip(texts, vectors))
        if out is None:
            for line in lines:
                print(line)
        else:
            out.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    print(f"embedded {len(texts)} texts into {vectors.shape[1]} dimensions", file=sys.stderr)


def search(args):
    path = Path(args.file)
    if not path.is_file():
        raise UserError(f"file {path} does not exist")
    if args.top_k < 1:
        raise UserError("--top-k must be >= 1")
    encoder, model_id = _encoder(args)
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


def convert(args):
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not empty; choose a new output directory")
    if args.direction == "import":
        model, tokenizer = import_hf(_source(args.source))
        save_checkpoint(out, model, tokenizer)
    else:
        model, tokenizer = load_checkpoint(resolve_checkpoint(args.source))
        export_hf(model, out, tokenizer)
    print_json({"direction": args.direction, "source": str(args.source), "out": str(out),
                "family": model.config.family, "parameters": model.num_parameters()})
