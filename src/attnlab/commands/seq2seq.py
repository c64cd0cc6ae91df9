"""generate and eval for encoder-decoder checkpoints; `attnlab generate` and `attnlab eval`
hand seq2seq checkpoints over to these."""

import json
import sys

from ..checkpoint import load_checkpoint, read_config
from ..data.seq2seq import check_length, encode_source, read_pairs
from ..errors import UserError
from ..evaluation import text_metrics
from ..inference import BeamSearch, Sampling
from ..inference.seq2seq import translate
from ..models.base import SEQ2SEQ, family_spec
from .common import print_json


def is_seq2seq_checkpoint(path) -> bool:
    return family_spec(read_config(path)).kind == SEQ2SEQ


def load(path):
    model, tokenizers = load_checkpoint(path)
    if tokenizers is None:
        raise UserError(f"{path} has no tokenizer.json; seq2seq generation needs the checkpoint's tokenizer")
    return model, tokenizers


EARLY_STOPPING = {"true": True, "false": False, "never": "never"}  # --early-stopping -> BeamSearch.early_stopping


def decoding(args, model):
    """--beams N > 1: beam search; --beams 1 (the default): greedy (temperature 0, the default)
    or sampling."""
    max_new = args.max_new_tokens or min(256, model.config.max_target_len - 1)
    early_stopping = getattr(args, "early_stopping", None)
    if args.beams < 1:
        raise UserError(f"--beams must be at least 1 (1: greedy or sampling, N > 1: beam search), got {args.beams}")
    if args.n_best < 1:
        raise UserError(f"--n-best must be at least 1, got {args.n_best}")
    if args.beams > 1:
        if args.n_best > args.beams:
            raise UserError(f"--n-best ({args.n_best}) cannot be more than --beams ({args.beams}): "
                            "beam search keeps --beams finished hypotheses")
        return BeamSearch(num_beams=args.beams, max_new_tokens=max_new, length_penalty=args.length_penalty,
                          num_return=args.n_best, use_cache=not getattr(args, "no_cache", False),
                          early_stopping=EARLY_STOPPING[early_stopping or "false"])
    if args.n_best > 1:
        raise UserError("--n-best needs beam search: pass --beams N with N >= --n-best")
    if early_stopping is not None:
        raise UserError("--early-stopping is for beam search: pass --beams N with N > 1")
    return Sampling(max_new_tokens=max_new, temperature=getattr(args, "temperature", None) or 0.0,
                    top_k=getattr(args, "top_k", None),
                    top_p=getattr(args, "top_p", None), seed=getattr(args, "seed", None),
                    use_cache=not getattr(args, "no_cache", False))


def generate(args, path):
    model, tokenizers = load(path)
    sources = args.prompt or [line for line in sys.stdin.read().splitlines() if line.strip()]
    if not sources:
        raise UserError("no input: pass --prompt TEXT or write source lines to stdin")
    outputs = translate(model, tokenizers, sources, decoding(args, model))
    for source, row in zip(sources, outputs):
        if args.json or args.n_best > 1:
            print(json.dumps({"source": source, "outputs": [{"text": t, "score": s} for t, s in row]},
                             ensure_ascii=False))
        else:
            print(row[0][0])


def evaluate(args, path):
    model, tokenizers = load(path)
    strategy = decoding(args, model)
    numbered = read_pairs(args.data)
    for line, source, _ in numbered:  # a source too long for the model is an error that names its line
        check_length(encode_source(tokenizers, source, model.config.eos_id), model.config.max_seq_len, "source",
                     f"{args.data} line {line}", "shorten or split it")
    outputs = translate(model, tokenizers, [source for _, source, _ in numbered], strategy)
    print_json(text_metrics([row[0][0] for row in outputs], [target for _, _, target in numbered]))
