"""Drawing a token: attnlab's `sample` (where a uniform draw falls in the cumulative distribution)
against `torch.multinomial`, which it replaced, side by side in one process: one draw at a character
vocabulary and at GPT-2's, then sampled `generate` and sampled speculative decoding (k=8) with
random-weight models at GPT-2's vocabulary (a 4-layer d 256 target, a 1-layer d 64 draft), where
each new token takes one draw and each drafted token another. Medians of interleaved repeats.

    OMP_NUM_THREADS=1 python benchmarks/bench_sampling.py
"""

import importlib
import statistics
import time

import torch

from attnlab.inference import Sampling, generate
from attnlab.inference import speculative
from attnlab.inference.speculative import ModelDrafter, speculative_generate
from attnlab.models.base import build_model, preset
from common import interleaved_ratios, machine, rate

generation = importlib.import_module("attnlab.inference.generate")  # the module, not the function


def multinomial(probs, generator=None):
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


SAMPLERS = {"torch.multinomial": multinomial, "sample": generation.sample}


def using(sampler):
    generation.sample = speculative.sample = sampler


def runs_per_second(run, sampler):
    """A runner for interleaved_ratios: one run drawing with `sampler`."""
    def timed():
        using(sampler)
        return rate(run, items=1)
    return timed


def median_seconds(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main():
    torch.set_num_threads(1)
    print(machine())
    generator = torch.Generator().manual_seed(0)
    print("\n| one draw | torch.multinomial us | sample us | x faster |\n|---|---|---|---|")
    for vocab in (65, 50257):
        probs = torch.rand(1, vocab, dtype=torch.float64)
        probs /= probs.sum()
        us = {name: median_seconds(lambda: draw(probs, generator), 2000) * 1e6 for name, draw in SAMPLERS.items()}
        print(f"| V = {vocab} | {us['torch.multinomial']:.1f} | {us['sample']:.1f} | "
              f"{us['torch.multinomial'] / us['sample']:.1f}x |")
    torch.manual_seed(0)
    sizes = {"vocab_size": 50257, "max_seq_len": 256}
    target = build_model(preset("gpt-tiny", n_layer=4, d_model=256, n_head=4, **sizes)).eval()
    draft = build_model(preset("gpt-tiny", n_layer=1, d_model=64, n_head=2, **sizes)).eval()
    prompt = [torch.randint(50257, (32,)).tolist()]
    sampling = Sampling(max_new_tokens=64, temperature=0.8, seed=0)
    runs = {"generate": lambda: generate(target, prompt, sampling),
            "speculative, k=8": lambda: speculative_generate(target, ModelDrafter(draft), prompt, sampling,
                                                             draft_tokens=8)}
    print("\n| 64 sampled tokens, V = 50257 | torch.multinomial ms | sample ms | x faster (min-max) |\n|---|---|---|---|")
    for name, run in runs.items():
        runners = {kind: runs_per_second(run, sampler) for kind, sampler in SAMPLERS.items()}
        ratios = interleaved_ratios(runners, "torch.multinomial", 7)
        using(SAMPLERS["sample"])
        (old, _, _, _), (new, ratio, low, high) = ratios["torch.multinomial"], ratios["sample"]
        print(f"| {name} | {1e3 / old:.1f} | {1e3 / new:.1f} | {ratio:.2f}x ({low:.2f}-{high:.2f}) |")


if __name__ == "__main__":
    main()
