"""Issue 23: batch-1 decoding with the compiled step (static KV cache + torch.compile) against
the eager path and Hugging Face `generate`, greedy and beam search, fp32 and bf16, on a random
GPT-2-shaped model (6 layers, d_model 384, 6 heads, vocabulary 8192, context 256) imported into
attnlab through attnlab.interop.

First it compiles (the first call's seconds are reported apart) and checks the tokens: compiled =
eager = HF for greedy fp32, compiled = eager for beam search; bf16 is compared with fp32. Then it
takes the shared benchmark lock (/tmp/attnlab-bench.lock) for the interleaved rounds only, and
reports medians of tokens/s and of the per-round ratios to HF fp32. `--profile` prints where the
time of one greedy run goes, eager and compiled; `--bf16` adds greedy runs with bf16 weights.

    OMP_NUM_THREADS=1 PYTHONPATH=src:benchmarks python benchmarks/bench_decode.py [--new-tokens 112] [--rounds 5]
"""

import argparse
import copy
import fcntl
import time

import torch

from attnlab.inference import BeamSearch, Sampling, causal_beam_search, generate
from bench_gpt_generate import models
from common import interleaved_ratios, machine, rate

PROMPT = 16
LOCK = "/tmp/attnlab-bench.lock"


def runners(ours, hf, prompt, n, beams, bf16):
    """name -> a function running one generation and returning its tokens."""

    def attnlab(model, compile):
        if beams > 1:
            options = BeamSearch(num_beams=beams, max_new_tokens=n, compile=compile)
            return lambda: causal_beam_search(model, prompt.tolist(), options)[0][0].tokens
        return lambda: generate(model, prompt.tolist(), Sampling(max_new_tokens=n, temperature=0, compile=compile))[0]

    def hugging_face(model):
        def run():
            with torch.inference_mode():
                out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                                     min_new_tokens=n, do_sample=False, num_beams=beams, pad_token_id=0)
            return out[0, prompt.size(1):].tolist()
        return run

    found = {"HF fp32": hugging_face(hf), "attnlab eager fp32": attnlab(ours, False),
             "attnlab compiled fp32": attnlab(ours, True)}
    if beams == 1 and bf16:
        ours_bf16, hf_bf16 = copy.deepcopy(ours).to(torch.bfloat16), copy.deepcopy(hf).to(torch.bfloat16)
        found.update({"HF bf16": hugging_face(hf_bf16), "attnlab eager bf16": attnlab(ours_bf16, False),
                      "attnlab compiled bf16": attnlab(ours_bf16, True)})
    return found


def first_difference(a, b) -> str:
    same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    return "all equal" if same is None else f"equal up to token {same}"


def profile(run, label):
    from torch.profiler import profile as torch_profile
    with torch_profile() as prof:
        run()
    print(f"\nprofile, {label}:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--new-tokens", type=int, default=112, help="16-token prompt + these = the 128 bucket")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--bf16", action="store_true", help="also greedy with bf16 weights (HF too)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ours, hf = models(n_positions=256, n_embd=384, n_layer=6, n_head=6)
    prompt = torch.randint(0, 8192, (1, PROMPT), generator=torch.Generator().manual_seed(1))
    print(f"machine: {machine()}; {args.new_tokens} new tokens after a {PROMPT}-token prompt, batch 1")
    for beams in (1, args.beams):
        found = runners(ours, hf, prompt, args.new_tokens, beams, args.bf16)
        tokens, first_call = {}, {}
        for name, run in found.items():  # the first call compiles
            start = time.perf_counter()
            tokens[name] = run()
            first_call[name] = time.perf_counter() - start
        kind = "greedy" if beams == 1 else f"beam search, {beams} beams"
        print(f"\n{kind}: tokens vs attnlab eager fp32:")
        for name in found:
            print(f"  {name:24s} {first_difference(tokens[name], tokens['attnlab eager fp32'])}; "
                  f"first call {first_call[name]:.1f} s")
        assert tokens["attnlab compiled fp32"] == tokens["attnlab eager fp32"], "compiled and eager tokens differ"
        if args.profile and beams == 1:
            profile(found["attnlab eager fp32"], "attnlab eager fp32")
            profile(found["attnlab compiled fp32"], "attnlab compiled fp32")
            profile(found["HF fp32"], "HF fp32")
        with open(LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            results = interleaved_ratios({name: (lambda run=run: rate(run, args.new_tokens)) for name, run in
                                          found.items()}, "HF fp32", args.rounds)
        print(f"{kind}, {args.rounds} interleaved rounds:")
        print(f"  {'':24s} {'tokens/s':>9s} {'ms/token':>9s}  vs HF fp32: median (min-max)")
        for name, (value, ratio, low, high) in results.items():
            print(f"  {name:24s} {value:9.1f} {1000 / value:9.2f}  {ratio:.2f}x ({low:.2f}-{high:.2f})")


if __name__ == "__main__":
    main()
