"""bf16 autocast against fp32 for attnlab's GPT training step as the model grows: where do the
CPU's bf16 units (AVX512-BF16, AMX) start to pay for the casts autocast adds?

    OMP_NUM_THREADS=1 PYTHONPATH=src:benchmarks python benchmarks/bf16_train_sizes.py [--rounds 5] [--steps 3] [--profile]

Each size trains fp32 and bf16-autocast copies of one random GPT on the same random batches
(forward, backward, clip, AdamW), in turns; the ratio is taken within each round. --profile adds
torch.profiler's top ops of one bf16 step at the smallest size.
"""

import argparse
import contextlib
import statistics

import torch

from attnlab.models import GPTConfig, build_model
from attnlab.training import make_optimizer
from common import interleaved_rates, machine, rate

VOCAB = 65
# (layers, heads, d_model, block, batch): nanoGPT's CPU recipe, its "baby GPT" recipe's shape at batch 8, then wider
SIZES = [(4, 4, 128, 64, 12), (6, 6, 384, 256, 8), (6, 12, 768, 256, 8)]


def training_step(size, bf16: bool):
    layers, heads, width, block, batch = size
    torch.manual_seed(0)
    model = build_model(GPTConfig(vocab_size=VOCAB, max_seq_len=block, n_layer=layers, n_head=heads, d_model=width,
                                  dropout=0.0, bias=False))
    optimizer = make_optimizer(model, 1e-3, 0.1, (0.9, 0.99))
    generator = torch.Generator().manual_seed(0)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def step():
        ids = torch.randint(0, VOCAB, (batch, block + 1), generator=generator)
        with autocast():
            loss = model(ids[:, :-1], targets=ids[:, 1:]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    print(machine())
    print("| layers, heads, d_model, block, batch | fp32 tokens/s | bf16 tokens/s | bf16 / fp32: median (min-max) |")
    print("|---|---|---|---|")
    for size in SIZES:
        steps = {"fp32": training_step(size, False), "bf16": training_step(size, True)}
        for step in steps.values():
            step()  # warm-up
        tokens = size[3] * size[4]
        rates = interleaved_rates({k: (lambda s=s: rate(s, tokens, args.steps)) for k, s in steps.items()}, args.rounds)
        ratios = [b / f for b, f in zip(rates["bf16"], rates["fp32"])]
        print(f"| {', '.join(map(str, size))} | {statistics.median(rates['fp32']):,.0f} | "
              f"{statistics.median(rates['bf16']):,.0f} | {statistics.median(ratios):.2f}x "
              f"({min(ratios):.2f}-{max(ratios):.2f}) |", flush=True)
    if args.profile:
        step = training_step(SIZES[0], True)
        step()
        with torch.profiler.profile() as profile:
            step()
        print(profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
