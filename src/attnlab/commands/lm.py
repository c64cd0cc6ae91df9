"""train, generate, eval: the life of a model on the command line."""

import json
import sys
from pathlib import Path

from ..checkpoint import load_checkpoint, read_config
from ..data.corpus import read_text
from ..errors import UserError
from ..evaluation import masked_lm_scores, perplexity
from ..inference import Sampling, causal_beam_search, stream_text
from ..models.base import CAUSAL_LM, ENCODER, SEQ2SEQ, families_of_kind, family_spec
from ..training import Trainer, distributed
from ..training.tasks import resolve_run, setup_task
from . import seq2seq
from .common import load_run_config, print_json, resolve_checkpoint

RUN_FILE = "run.json"


def register(sub):
    p = sub.add_parser("train", help="train a model from a run config (YAML/JSON) with key=value overrides")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="e.g. train.lr=3e-4 model.n_layer=2")
    p.add_argument("--config", help="YAML or JSON run config (sections: task, model, tokenizer, data, train)")
    p.add_argument("--data", help="text file or folder (sets data.path); for task seq2seq the training pairs file")
    p.add_argument("--preset", help="model preset (sets model.preset)")
    p.add_argument("--out", default="runs/train", help="run directory (default: runs/train)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.set_defaults(run=train)

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
    p.add_argument("--json", action="store_true", help="print one JSON line per prompt instead of streaming")
    _add_seq2seq_decoding(p)
    p.set_defaults(run=generate)

    p = sub.add_parser("eval", help="perplexity of a causal LM on a text file, masked-LM perplexity and accuracy "
                       "of an encoder, or BLEU/chrF/ROUGE of a seq2seq model on a pairs file")
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True, help="text file or folder; for seq2seq a .tsv or .jsonl pairs file")
    p.add_argument("--stride", type=int, help="window step in tokens (default: half the context)")
    p.add_argument("--max-new-tokens", type=int, help="seq2seq: longest output (default: what the model allows, <= 256)")
    _add_seq2seq_decoding(p)
    p.set_defaults(run=evaluate)


def _add_seq2seq_decoding(p):
    p.add_argument("--beams", type=int, default=1, help="beam size (default 1: greedy or sampling)")
    p.add_argument("--length-penalty", type=float, default=1.0, help="beam search: score / length ** this")
    p.add_argument("--n-best", type=int, default=1, help="beam search: outputs per prompt or source (JSON lines)")
    p.add_argument("--early-stopping", choices=["true", "false", "never"],
                   help="beam search: stop at --beams finished hypotheses (true), when none can improve "
                   "(false, the default), or only at --max-new-tokens (never)")


def train(args):
    run_dir = Path(args.out)
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.path={args.data}")
    if args.preset:
        overrides.append(f"model.preset={args.preset}")
    if args.resume:
        if not (run_dir / RUN_FILE).exists():
            raise UserError(f"{run_dir} has no run to resume ({RUN_FILE} is missing)")
        run = load_run_config(run_dir / RUN_FILE, overrides)
    else:
        if (run_dir / "last").exists():
            raise UserError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
        run = load_run_config(args.config, overrides)
    resolved = resolve_run(run)
    parallel = distributed.from_env(resolved.train.distributed, resolved.train.device)  # one process unless torchrun
    try:
        with parallel.main_first():  # rank 0 writes the data cache, the others then read it
            model, tokenizer, batches = setup_task(resolved, run_dir, args.resume)
        trainer = Trainer(model, resolved.train, batches, run_dir, tokenizer, parallel=parallel,
                          block_class=family_spec(model).sharding_unit)
        if args.resume:
            trainer.resume(run_dir / "last")
        if parallel.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / RUN_FILE).write_text(json.dumps(run, indent=2))
            print(f"{model.config.family} model, {model.num_parameters():,} parameters, training on {trainer.device}"
                  f"{f' x {parallel.world_size} processes' if parallel.world_size > 1 else ''}; run directory {run_dir}",
                  file=sys.stderr)
        try:
            last = trainer.train()
        except KeyboardInterrupt:
            raise UserError(f"interrupted at step {trainer.step}; the last checkpoint in {run_dir / 'last'} is intact, "
                            "continue with --resume") from None
    finally:
        parallel.close()
    if parallel.is_main:
        print_json({"run_dir": str(run_dir), "best_val_loss": trainer.best_val, **last})


def load_causal_lm(path):
    model, tokenizer = load_checkpoint(resolve_checkpoint(path), families=families_of_kind(CAUSAL_LM))
    if not getattr(model.config, "causal", True):
        raise UserError(f"{path} holds a bidirectional {model.config.family} model (causal=false); "
                        "generate and eval need a causal language model")
    return model, tokenizer


def generate(args):
    path = resolve_checkpoint(args.checkpoint)
    if seq2seq.is_seq2seq_checkpoint(path):
        return seq2seq.generate(args, path)
    args.max_new_tokens = 200 if args.max_new_tokens is None else args.max_new_tokens
    model, tokenizer = load_causal_lm(path)
    prompts = args.prompt or [sys.stdin.read()]
    if args.beams != 1 or args.n_best != 1 or args.early_stopping is not None:
        return _beam_search(args, model, tokenizer, prompts)
    args.temperature = 0.8 if args.temperature is None else args.temperature
    sampling = Sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                        top_p=args.top_p, seed=args.seed, use_cache=not args.no_cache)
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


def _beam_search(args, model, tokenizer, prompts):
    """One JSON line per prompt: its --n-best completions with their scores, best first."""
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be at least 1 for beam search, got {args.max_new_tokens}")
    options = seq2seq.decoding(args, model)  # --beams N > 1 here: the flags' checks are shared with seq2seq
    if args.stop or args.temperature or args.top_k or args.top_p:
        raise UserError("beam search is deterministic and keeps whole hypotheses: drop --temperature, --top-k, "
                        "--top-p and --stop")
    encoded = [tokenizer.encode(p) for p in prompts]
    for prompt, hyps in zip(prompts, causal_beam_search(model, encoded, options, tokenizer.eos_id)):
        outputs = [{"text": tokenizer.decode(h.tokens), "score": h.score} for h in hyps]
        print(json.dumps({"prompt": prompt, "outputs": outputs}, ensure_ascii=False))


def evaluate(args):
    path = resolve_checkpoint(args.checkpoint)
    kind = family_spec(read_config(path)).kind
    if kind == SEQ2SEQ:
        return seq2seq.evaluate(args, path)
    if kind == ENCODER:
        model, tokenizer = load_checkpoint(path)
        return print_json(masked_lm_scores(model, tokenizer, read_text(args.data)))
    model, tokenizer = load_causal_lm(path)
    print_json(perplexity(model, tokenizer, read_text(args.data), stride=args.stride))
