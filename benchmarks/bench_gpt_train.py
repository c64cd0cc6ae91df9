"""Training speed: attnlab GPT vs Hugging Face GPT2LMHeadModel with the identical configuration
(4 layers, 4 heads, d_model 128, block 64, batch 12, vocabulary 65, no dropout), same batches,
one process. Reports tokens/s (median of interleaved rounds) and the ratio to HF eager, taken
within each round (median and range over the rounds), for the plain model and for what may help
on this CPU: fused AdamW (for HF too), torch.compile, bf16 autocast.

With --nanogpt DIR (a checkout of github.com/karpathy/nanoGPT, whose model.py is imported as a
reference and nothing else) two more rows: nanoGPT's GPT in its CPU configuration (exact GELU, no
biases, tied embeddings, its own configure_optimizers: plain AdamW on a CPU) and attnlab's GPT
configured the same, with the ratio of the two taken within each round.

    python benchmarks/bench_gpt_train.py [--rounds 5] [--steps 20] [--threads N] [--no-compile] [--nanogpt DIR]
"""

import argparse
import contextlib
import importlib.util
import os
import statistics

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from attnlab.models import GPTConfig, build_model
from attnlab.training import make_optimizer
from common import interleaved_rates, machine, rate

VOCAB, BLOCK, BATCH = 65, 64, 12
NANOGPT, OURS_AS_NANOGPT = "nanoGPT model.py", "attnlab, nanoGPT's config"


def attnlab_model():
    return build_model(GPTConfig(vocab_size=VOCAB, max_seq_len=BLOCK, n_layer=4, n_head=4, d_model=128,
                                 activation="gelu_tanh", dropout=0.0))


def hf_model():
    config = GPT2Config(vocab_size=VOCAB, n_positions=BLOCK, n_embd=128, n_layer=4, n_head=4, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, activation_function="gelu_new")
    return GPT2LMHeadModel(config)


def nanogpt_pair(directory: str):
    """nanoGPT's GPT (from DIR/model.py) in its CPU configuration with its own optimizer, and
    attnlab's GPT configured alike (exact GELU, no biases, tied) with plain AdamW."""
    spec = importlib.util.spec_from_file_location("nanogpt_model", f"{directory}/model.py")
    nanogpt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nanogpt)
    theirs = nanogpt.GPT(nanogpt.GPTConfig(block_size=BLOCK, vocab_size=VOCAB, n_layer=4, n_head=4, n_embd=128,
                                           dropout=0.0, bias=False))
    ours = build_model(GPTConfig(vocab_size=VOCAB, max_seq_len=BLOCK, n_layer=4, n_head=4, d_model=128,
                                 activation="gelu", dropout=0.0, bias=False, tie_weights=True))
    return {NANOGPT: step_fn(theirs, lambda m, ids: m(ids[:, :-1], ids[:, 1:].contiguous())[1],  # it views targets
                                        optimizer=theirs.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")),
            OURS_AS_NANOGPT: step_fn(ours, ours_loss)}


def step_fn(model, loss_of, fused=False, bf16=False, optimizer=None, batch=BATCH, block=BLOCK):
    optimizer = optimizer or make_optimizer(model, 1e-3, 0.1, (0.9, 0.99), fused=fused)
    generator = torch.Generator().manual_seed(0)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def step():
        ids = torch.randint(0, VOCAB, (batch, block + 1), generator=generator)
        with autocast():
            loss = loss_of(model, ids)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def ours_loss(model, ids):
    return model(ids[:, :-1], targets=ids[:, 1:]).loss


def hf_loss(model, ids):
    return model(ids[:, :-1], labels=ids[:, :-1]).loss  # HF shifts inside: same number of predictions


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="0: torch's default")
    parser.add_argument("--nanogpt", help="a nanoGPT checkout: add its model.py and attnlab in its configuration")
    args = parser.parse_args()
    if args.nanogpt and not os.path.isfile(f"{args.nanogpt}/model.py"):
        parser.error(f"--nanogpt: {args.nanogpt} holds no model.py; give a checkout of github.com/karpathy/nanoGPT")
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = {
        "hf eager": step_fn(hf_model(), hf_loss),
        "hf fused AdamW": step_fn(hf_model(), hf_loss, fused=True),
        "attnlab eager": step_fn(attnlab_model(), ours_loss),
        "attnlab fused AdamW": step_fn(attnlab_model(), ours_loss, fused=True),
        "attnlab bf16 autocast": step_fn(attnlab_model(), ours_loss, bf16=True),
    }
    if not args.no_compile:
        model = attnlab_model()
        compiled = torch.compile(model)
        variants["attnlab compile + fused"] = step_fn(model, lambda m, ids: ours_loss(compiled, ids), fused=True)
    if args.nanogpt:
        variants.update(nanogpt_pair(args.nanogpt))
    tokens = BATCH * BLOCK
    runners = {}
    for name, step in variants.items():
        for _ in range(3):
            step()  # warm-up (and compilation)
        runners[name] = lambda step=step: rate(step, tokens, args.steps)
    rates = interleaved_rates(runners, args.rounds)
    print(f"machine: {machine()}")
    print(f"{'variant':28s} {'tokens/s':>10s} {'vs HF eager (median of rounds, min-max)':>40s}")
    for name, values in rates.items():
        print(f"{name:28s} {statistics.median(values):10.0f} {ratio_summary(values, rates['hf eager']):>40s}")
    if args.nanogpt:
        print("attnlab vs nanoGPT, both in nanoGPT's configuration:", ratio_summary(rates[OURS_AS_NANOGPT], rates[NANOGPT]))


def ratio_summary(values: list, baselines: list) -> str:
    """The ratio within each round: median (min-max)."""
    ratios = [value / base for value, base in zip(values, baselines)]
    return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"


if __name__ == "__main__":
    main()
