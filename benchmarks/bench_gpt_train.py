"""Training speed: attnlab GPT vs Hugging Face GPT2LMHeadModel with the identical configuration
(4 layers, 4 heads, d_model 128, block 64, batch 12, vocabulary 65, no dropout), same batches,
one process. Reports tokens/s (median of interleaved rounds) and the ratio to HF eager, taken
within each round (median and range over the rounds), for the plain model and for what may help
on this CPU: fused AdamW (for HF too), torch.compile, bf16 autocast.

    python benchmarks/bench_gpt_train.py [--rounds 5] [--steps 20] [--threads N] [--no-compile]
"""

import argparse
import contextlib

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from attnlab.models import GPTConfig, build_model
from attnlab.training import make_optimizer
from common import interleaved_ratios, machine, rate

VOCAB, BLOCK, BATCH = 65, 64, 12


def attnlab_model():
    return build_model(GPTConfig(vocab_size=VOCAB, max_seq_len=BLOCK, n_layer=4, n_head=4, d_model=128,
                                 activation="gelu_tanh", dropout=0.0))


def hf_model():
    config = GPT2Config(vocab_size=VOCAB, n_positions=BLOCK, n_embd=128, n_layer=4, n_head=4, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, activation_function="gelu_new")
    return GPT2LMHeadModel(config)


def step_fn(model, loss_of, fused=False, bf16=False):
    optimizer = make_optimizer(model, 1e-3, 0.1, (0.9, 0.99), fused=fused)
    generator = torch.Generator().manual_seed(0)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def step():
        ids = torch.randint(0, VOCAB, (BATCH, BLOCK + 1), generator=generator)
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
    args = parser.parse_args()
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
    tokens = BATCH * BLOCK
    runners = {}
    for name, step in variants.items():
        for _ in range(3):
            step()  # warm-up (and compilation)
        runners[name] = lambda step=step: rate(step, tokens, args.steps)
    summary = interleaved_ratios(runners, "hf eager", args.rounds)
    print(f"machine: {machine()}")
    print(f"{'variant':28s} {'tokens/s':>10s} {'vs HF eager (median of rounds, min-max)':>40s}")
    for name, (value, ratio, low, high) in summary.items():
        print(f"{name:28s} {value:10.0f} {ratio:13.2f}x ({low:.2f}-{high:.2f})")


if __name__ == "__main__":
    main()
