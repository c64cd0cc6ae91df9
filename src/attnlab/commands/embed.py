"""embed: sentence vectors (mean-pooled, L2-normalised) of texts from an encoder, or of texts and
images into one space from a dual encoder (CLIP); also the model loading that search shares."""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from ..checkpoint import load_checkpoint, read_config
from ..errors import UserError
from ..evaluation.retrieval import embed_images, embed_texts
from ..inference.embeddings import SentenceEncoder
from ..interop import import_hf, minilm_path, read_hf_config
from ..models.base import DUAL_ENCODER, ENCODER, family_spec
from .common import for_kind, resolve_checkpoint

MODEL_HELP = ("an attnlab checkpoint or run directory, a Hugging Face directory, or 'minilm' for the bundled "
              "all-MiniLM-L6-v2 (default)")


def register(sub):
    p = sub.add_parser("embed", help="sentence embeddings (mean-pooled, L2-normalised) of texts, one per line")
    p.add_argument("input", nargs="?", help="text file, one text per line; blank lines are skipped (default: stdin)")
    p.add_argument("--out", help="FILE.npy (a float32 array) or FILE.jsonl; default: JSON lines on stdout")
    p.add_argument("--images", nargs="+", metavar="FILE", help="dual encoders (CLIP): embed these image files "
                   "(PNG, JPEG, .npy) instead of texts, into the same space")
    encoder_arguments(p)
    p.set_defaults(run=embed)


def encoder_arguments(p):
    p.add_argument("--model", default="minilm", help=MODEL_HELP + "; a dual encoder (CLIP) checkpoint embeds "
                   "texts and images into one space")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=256, help="tokens per text; longer texts are truncated")


def load_encoder(verb, name):
    """-> (encoder model, tokenizer, an id of the model for index keys). Only encoders embed:
    a causal LM or seq2seq checkpoint is refused (their states are not trained as sentence vectors)."""
    path = minilm_path() if name == "minilm" else Path(name)
    if path.is_dir() and (path / "config.json").is_file() and "model_type" in read_hf_config(path):
        model, tokenizer = import_hf(path)
    else:
        load, path = for_kind(verb, path, {ENCODER: load_checkpoint})
        model, tokenizer = load(path)
    if tokenizer is None or not hasattr(tokenizer, "batch_encode"):
        raise UserError(f"{path} has no subword tokenizer (tokenizer.json or vocab.txt); an encoder needs one")
    weights = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin"))
    stamp = [(path / "config.json").read_text()] + [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                                                   for p in weights]
    model_id = f"{path.resolve()}#{hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:16]}"
    return model, tokenizer, model_id


def load_dual_encoder(name):
    """-> (model, processor) when --model names a dual-encoder checkpoint (CLIP), else None."""
    if name == "minilm":
        return None
    try:
        path = resolve_checkpoint(name)
        kind = family_spec(read_config(path)).kind
    except UserError:  # not an attnlab checkpoint (a Hugging Face directory): load_encoder says what it is
        return None
    if kind != DUAL_ENCODER:
        return None
    model, processor = load_checkpoint(path)
    if processor is None:
        raise UserError(f"{path} has no processor.json and tokenizer.json; a dual encoder needs them")
    return model, processor


def sentence_encoder(args):
    """-> (SentenceEncoder, model id) from --model, --batch-size and --max-length."""
    if args.batch_size < 1 or args.max_length < 3:
        raise UserError("--batch-size must be >= 1 and --max-length >= 3")
    model, tokenizer, model_id = load_encoder(args.verb, args.model)
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
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be a positive integer, got {args.batch_size}")
    dual = load_dual_encoder(args.model)
    if args.images and dual is None:
        raise UserError("--images needs a dual encoder (a CLIP checkpoint) as --model")
    if args.images and args.input:
        raise UserError("give a text file or --images, not both")
    field, inputs = ("image", args.images) if args.images else ("text", _read_texts(args.input))
    if dual is None:
        encoder, _ = sentence_encoder(args)
        vectors = encoder.encode(inputs, quiet=False)
    elif args.images:
        vectors = embed_images(dual[0], dual[1], [dual[1].read(f) for f in inputs], args.batch_size)
    else:
        vectors = embed_texts(*dual, inputs, args.batch_size)
    vectors = vectors.numpy().astype(np.float32)
    if out is not None and out.suffix == ".npy":
        np.save(out, vectors)
    else:
        lines = (json.dumps({field: t, "embedding": v.tolist()}, ensure_ascii=False) for t, v in zip(inputs, vectors))
        if out is None:
            for line in lines:
                print(line)
        else:
            out.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    print(f"embedded {len(inputs)} {field}s into {vectors.shape[1]} dimensions", file=sys.stderr)
