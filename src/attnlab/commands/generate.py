"""generate: continue prompts with a causal LM (sampling or beam search), or translate sources
with an encoder-decoder."""

import json
import sys
from typing import Optional

from ..checkpoint import load_checkpoint
from ..tokenizers import TOKENIZER_FILE
from ..errors import UserError
from ..inference import BeamSearch, Sampling, causal_beam_search, stream_text
from ..inference.generate import cut_at_stop
from ..inference.seq2seq import translate
from ..inference.speculative import LookupDrafter, ModelDrafter, speculative_generate
from ..models.base import CAUSAL_LM, SEQ2SEQ
from .common import for_kind, refuse_bidirectional, resolve_checkpoint

EARLY_STOPPING = {"true": True, "false": False, "never": "never"}  # --early-stopping -> BeamSearch.early_stopping


def register(sub):
    p = sub.add_parser("generate", help="generate text from a causal LM, or translate with a seq2seq checkpoint")
    p.add_argument("checkpoint", help="checkpoint directory or run directory")
    p.add_argument("--prompt", action="append", help="prompt text; repeat for a batch (default: read stdin)")
    p.add_argument("--max-new-tokens", type=int, help="default 200 (seq2seq: what the model allows, <= 256)")
    p.add_argument("--temperature", type=float, help="0 for greedy decoding (default 0.8; 0 for seq2seq)")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--stop", action="append", default=[], help="stop string; repeatable")
    p.add_argument("--seed", type=int)
    p.add_argument("--no-cache", action="store_true", help="recompute the whole sequence at every step")
    p.add_argument("--compile", action="store_true",
                   help="causal LMs with a KV cache: torch.compile the one-token step over a fixed-shape cache "
                   "(compiles once per batch size and length bucket, a minute or more on a CPU; then faster)")
    p.add_argument("--json", action="store_true", help="print one JSON line per prompt instead of streaming")
    speculation_arguments(p)
    decoding_arguments(p)
    p.set_defaults(run=generate)


def speculation_arguments(p):
    p.add_argument("--draft", help="speculative decoding: a small causal LM checkpoint with the same tokenizer "
                   "drafts tokens that the model checks in one pass (the output is distributed as without it)")
    p.add_argument("--prompt-lookup", action="store_true",
                   help="speculative decoding with drafts copied from earlier text (no draft model)")
    p.add_argument("--draft-tokens",
                   help="tokens drafted per round, or 'auto': follow the acceptance rate (prompt lookup: draft "
                   "only while measured faster); default 4 with --draft, auto with --prompt-lookup")


def draft_tokens(text: Optional[str]):
    """--draft-tokens -> a positive integer, 'auto', or None (not given: the drafter's default)."""
    if text is None:
        return None
    if text != "auto" and not (text.isdigit() and int(text) >= 1):
        raise UserError(f"--draft-tokens must be a positive integer or 'auto', got {text!r}")
    return text if text == "auto" else int(text)


def drafter_for(args, model, verb: str):
    """The drafter --draft or --prompt-lookup asks for (None for neither)."""
    if args.draft and args.prompt_lookup:
        raise UserError("choose one drafter: --draft CKPT or --prompt-lookup")
    if args.draft:
        return ModelDrafter(load_draft(args.draft, args.checkpoint, model, verb))
    return LookupDrafter() if args.prompt_lookup else None


def decoding_arguments(p):
    p.add_argument("--beams", type=int, default=1, help="beam size (default 1: greedy or sampling)")
    p.add_argument("--length-penalty", type=float, default=1.0, help="beam search: score / length ** this")
    p.add_argument("--n-best", type=int, default=1, help="beam search: outputs per prompt or source (JSON lines)")
    p.add_argument("--early-stopping", choices=["true", "false", "never"],
                   help="beam search: stop at --beams finished hypotheses (true), when none can improve "
                   "(false, the default), or only at --max-new-tokens (never)")


def generate(args):
    run, path = for_kind("generate", args.checkpoint, {CAUSAL_LM: continue_prompts, SEQ2SEQ: translate_sources})
    model, processor = load_checkpoint(path)
    if processor is None:
        raise UserError(f"{args.checkpoint} has no tokenizer.json; generate needs the checkpoint's tokenizer")
    run(args, model, processor)


def continue_prompts(args, model, tokenizer):
    refuse_bidirectional("generate", args.checkpoint, model)
    args.max_new_tokens = 200 if args.max_new_tokens is None else args.max_new_tokens
    prompts = args.prompt or [sys.stdin.read()]
    if args.beams != 1 or args.n_best != 1 or args.early_stopping is not None:
        return _beam_search(args, model, tokenizer, prompts)
    args.temperature = 0.8 if args.temperature is None else args.temperature
    sampling = Sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                        top_p=args.top_p, seed=args.seed, use_cache=not args.no_cache, compile=args.compile)
    if args.draft or args.prompt_lookup:
        return _speculate(args, model, tokenizer, prompts, sampling)
    pieces = stream_text(model, tokenizer, prompts, sampling, stop=args.stop)
    if args.json or len(prompts) > 1:
        completions = [""] * len(prompts)
        for step in pieces:
            completions = [c + p for c, p in zip(completions, step)]
        for prompt, completion in zip(prompts, completions):
            print(json.dumps({"prompt": prompt, "completion": completion}, ensure_ascii=False))
        return
    sys.stdout.write(prompts[0])
    for step in pieces:
        sys.stdout.write(step[0])
        sys.stdout.flush()
    sys.stdout.write("\n")


def _speculate(args, model, tokenizer, prompts, sampling):
    """Speculative decoding: the completions (JSON lines for --json or a batch), then the rounds and
    the acceptance rate on stderr."""
    if args.no_cache:
        raise UserError("speculative decoding checks drafts through the decode state: drop --no-cache")
    drafter, k = drafter_for(args, model, "generate"), draft_tokens(args.draft_tokens)
    encoded = [tokenizer.encode(p) for p in prompts]
    outputs, stats = speculative_generate(model, drafter, encoded, sampling, tokenizer.eos_id, k)
    completions = [cut_at_stop(tokenizer.decode(tokens), args.stop)[0] for tokens in outputs]
    for prompt, completion in zip(prompts, completions):
        if args.json or len(prompts) > 1:
            print(json.dumps({"prompt": prompt, "completion": completion}, ensure_ascii=False))
        else:
            print(prompt + completion)
    print(f"speculative decoding: {stats.rounds} rounds, {stats.drafted} tokens drafted "
          f"({args.draft_tokens or 'default'} per round), {stats.acceptance_rate:.1%} accepted", file=sys.stderr)


def load_draft(draft, checkpoint, model, verb: str):
    """The draft checkpoint's model: a causal LM whose tokenizer is the target's (the same file)."""
    _, draft_path = for_kind(f"{verb} --draft", draft, {CAUSAL_LM: None})
    tokenizers = [path / TOKENIZER_FILE for path in (draft_path, resolve_checkpoint(checkpoint))]
    if not tokenizers[0].is_file() or tokenizers[0].read_bytes() != tokenizers[1].read_bytes():
        raise UserError(f"the draft {draft} has another tokenizer than {checkpoint}; a draft must share the "
                        "target's tokenizer (train it on the same text, or use --prompt-lookup)")
    draft_model, _ = load_checkpoint(draft_path, device=next(model.parameters()).device)
    refuse_bidirectional(f"{verb} --draft", draft, draft_model)
    if draft_model.config.vocab_size != model.config.vocab_size:
        raise UserError(f"the draft's vocabulary ({draft_model.config.vocab_size} ids) differs from the target's "
                        f"({model.config.vocab_size}); give both models the same vocab_size")
    return draft_model


def _beam_search(args, model, tokenizer, prompts):
    """One JSON line per prompt: its --n-best completions with their scores, best first."""
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be at least 1 for beam search, got {args.max_new_tokens}")
    options = decoding(args, model)  # --beams N > 1 here: the flags' checks are shared with seq2seq
    if args.stop or args.temperature or args.top_k or args.top_p:
        raise UserError("beam search is deterministic and keeps whole hypotheses: drop --temperature, --top-k, "
                        "--top-p and --stop")
    encoded = [tokenizer.encode(p) for p in prompts]
    for prompt, hyps in zip(prompts, causal_beam_search(model, encoded, options, tokenizer.eos_id)):
        outputs = [{"text": tokenizer.decode(h.tokens), "score": h.score} for h in hyps]
        print(json.dumps({"prompt": prompt, "outputs": outputs}, ensure_ascii=False))


def translate_sources(args, model, tokenizers):
    sources = args.prompt or [line for line in sys.stdin.read().splitlines() if line.strip()]
    if not sources:
        raise UserError("no input: pass --prompt TEXT or write source lines to stdin")
    outputs = translate(model, tokenizers, sources, decoding(args, model), quiet=False)
    for source, row in zip(sources, outputs):
        if args.json or args.n_best > 1:
            print(json.dumps({"source": source, "outputs": [{"text": t, "score": s} for t, s in row]},
                             ensure_ascii=False))
        else:
            print(row[0][0])


def decoding(args, model):
    """--beams N > 1: beam search; --beams 1 (the default): greedy (temperature 0, the default)
    or sampling. `eval` parses only the beam flags, so the sampling ones default here."""
    max_new = args.max_new_tokens or min(256, model.config.max_target_len - 1)
    if args.beams < 1:
        raise UserError(f"--beams must be at least 1 (1: greedy or sampling, N > 1: beam search), got {args.beams}")
    if args.n_best < 1:
        raise UserError(f"--n-best must be at least 1, got {args.n_best}")
    use_cache = not getattr(args, "no_cache", False)
    if args.beams > 1:
        if args.n_best > args.beams:
            raise UserError(f"--n-best ({args.n_best}) cannot be more than --beams ({args.beams}): "
                            "beam search keeps --beams finished hypotheses")
        return BeamSearch(num_beams=args.beams, max_new_tokens=max_new, length_penalty=args.length_penalty,
                          num_return=args.n_best, use_cache=use_cache, compile=getattr(args, "compile", False),
                          early_stopping=EARLY_STOPPING[args.early_stopping or "false"])
    if args.n_best > 1:
        raise UserError("--n-best needs beam search: pass --beams N with N >= --n-best")
    if args.early_stopping is not None:
        raise UserError("--early-stopping is for beam search: pass --beams N with N > 1")
    return Sampling(max_new_tokens=max_new, temperature=getattr(args, "temperature", None) or 0.0,
                    top_k=getattr(args, "top_k", None), top_p=getattr(args, "top_p", None),
                    seed=getattr(args, "seed", None), use_cache=use_cache)
