"""bf16 autocast against fp32 for attnlab's GPT training step as the model grows: where do the
CPU's bf16 units (AVX512-BF16, AMX) start to pay for the casts autocast adds?

    OMP_NUM_THREADS=1 PYTHONPATH=src:benchmarks python benchmarks/bf16_train_sizes.py [--rounds 5] [--steps 3] [--profile]

Each size trains fp32 and bf16-autocast copies of one random GPT on the same random batches
(forward, backward, clip, AdamW), in turns; the ratio is taken within each round. --profile adds
torch.profiler's top ops of one bf16 step at the smallest size.
"""

import argparse

import torch

from attnlab.models import GPTConfig, build_model
from bench_gpt_train import VOCAB, ours_loss, step_fn
from common import interleaved_ratios, machine, rate

# (layers, heads, d_model, block, batch): nanoGPT's CPU recipe, its "baby GPT" recipe's shape at batch 8, then wider
SIZES = [(4, 4, 128, 64, 12), (6, 6, 384, 256, 8), (6, 12, 768, 256, 8)]


def training_step(size, bf16: bool):
    """One GPT of `size`, seeded alike for fp32 and bf16; -> its training step (bench_gpt_train's)."""
    layers, heads, width, block, batch = size
    torch.manual_seed(0)
    model = build_model(GPTConfig(vocab_size=VOCAB, max_seq_len=block, n_layer=layers, n_head=heads, d_model=width,
                                  dropout=0.0, bias=False))
    return step_fn(model, ours_loss, bf16=bf16, batch=batch, block=block)


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
        summary = interleaved_ratios({k: (lambda s=s: rate(s, tokens, args.steps)) for k, s in steps.items()}, "fp32",
                                     args.rounds)
        (fp32, *_), (bf16, ratio, low, high) = summary["fp32"], summary["bf16"]
        print(f"| {', '.join(map(str, size))} | {fp32:,.0f} | {bf16:,.0f} | {ratio:.2f}x ({low:.2f}-{high:.2f}) |",
              flush=True)
    if args.profile:
        step = training_step(SIZES[0], True)
        step()
        with torch.profiler.profile() as profile:
            step()
        print(profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
