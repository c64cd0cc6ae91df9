"""demo: the main job. Trains a small character-level GPT on the documentation that ships
with Python itself (pydoc's topic texts, on every machine, no download), then samples from
it and measures its perplexity on held-out text."""

import sys
import time
from pathlib import Path

from ..checkpoint import load_checkpoint
from ..evaluation import perplexity
from ..inference import Sampling, generate_text
from ..training import Trainer
from ..training.tasks import resolve_run, setup_task
from .common import FORCE_HELP, fresh_output, print_json

CORPUS = "python_docs.txt"
PROMPTS = ["The \"for\" statement", "A function definition", "Exceptions are"]


def register(sub):
    p = sub.add_parser("demo", help="train a small GPT on Python's own documentation, then sample and evaluate it")
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo); an earlier demo's "
                   "is replaced once the new run is complete, any other non-empty directory refused")
    p.add_argument("--force", action="store_true", help=FORCE_HELP)
    p.add_argument("--steps", type=int, default=1000, help="training steps (default 1000, a few minutes on 2 cores)")
    p.set_defaults(run=demo)


def python_docs_text() -> str:
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    return "\n\n".join(topics[name] for name in sorted(topics))


def demo(args):
    out = Path(args.out)
    with fresh_output(out, "demo", args.force) as run_dir:
        train_and_report(args.steps, run_dir)
    print(f"\nCheckpoint, metrics and loss curve (loss.png) in {out}. Try:\n"
          f"  attnlab generate {out} --prompt 'The \"while\" statement' --max-new-tokens 200\n"
          f"  attnlab eval {out} --data {out / CORPUS}")


def train_and_report(steps: int, run_dir: Path):
    """Train in `run_dir`, then print samples and the held-out perplexity."""
    corpus = run_dir / CORPUS
    corpus.write_text(python_docs_text())
    val_fraction = 0.05
    run = resolve_run({
        "task": "lm",
        "data": {"path": str(corpus), "val_fraction": val_fraction},
        "tokenizer": {"kind": "char"},
        "model": {"preset": "gpt2-nano", "max_seq_len": 128, "activation": "gelu"},
        "train": {"max_steps": steps, "batch_size": 16, "lr": 2e-3, "min_lr": 2e-4, "warmup_steps": 100,
                  "weight_decay": 0.1, "eval_interval": max(1, steps // 5), "eval_batches": 20},
    })
    model, tokenizer, batches = setup_task(run, run_dir, resume=False)
    print(f"Training a {model.num_parameters():,}-parameter character-level GPT on {corpus.stat().st_size:,} bytes "
          f"of Python's documentation for {steps} steps.", file=sys.stderr)
    started = time.perf_counter()
    Trainer(model, run.train, batches, run_dir, tokenizer).train()
    minutes = (time.perf_counter() - started) / 60
    model, tokenizer = load_checkpoint(run_dir / "best")
    print(f"\nTrained in {minutes:.1f} min. Samples (temperature 0.8, top-k 40):\n")
    completions = generate_text(model, tokenizer, PROMPTS, Sampling(max_new_tokens=200, temperature=0.8, top_k=40, seed=0))
    for prompt, completion in zip(PROMPTS, completions):
        print(f"--- {prompt}{completion}\n")
    text = corpus.read_text()
    held_out = text[int(len(text) * (1 - val_fraction)):]
    scores = perplexity(model, tokenizer, held_out)
    print("Held-out documentation (last 5 %):")
    print_json({k: round(v, 4) if isinstance(v, float) else v for k, v in scores.items()})
