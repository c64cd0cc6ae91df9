"""Mamba against a GPT of about the same size, and against Hugging Face's Mamba, on one thread.

    flock /tmp/attnlab-bench.lock env OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/mamba_scaling.py train
    ... mamba_scaling.py generate
    ... mamba_scaling.py hf

train: one training step (forward + backward, batch 1) of each model at each length, each
(model, length) in a fresh process: median time of --repeats steps after a warm-up, and peak
resident memory above the process's size before the step; then the log-log slope of time and
memory against length. generate: per new token, the time of a greedy step after a prompt of 64
or 2048 tokens (median over --new tokens), and the decode state's bytes (Mamba's conv windows and
SSM states; the GPT's KV cache up to the tokens held). hf: Hugging Face MambaForCausalLM (its
PyTorch path, what CPU users get) and ours with the same weights, interleaved in one process:
a training step and greedy generation (ours eager, and with the compiled single-token step of
`Sampling(compile=True)`), medians and the ratio.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from attnlab.inference import Sampling, generate
from attnlab.interop import load_hf_state
from attnlab.models import build_model
from attnlab.models.gpt import GPTConfig
from attnlab.models.mamba import MambaConfig
from common import interleaved_ratios, loglog_slope, machine, rate, run_worker, time_and_peak

VOCAB = 65
# 2 GPT layers (d 128, 4 heads, rotary, like the long-context baseline) against 3 Mamba layers (d 128)
MODELS = {"mamba": lambda n: MambaConfig(vocab_size=VOCAB, max_seq_len=n, n_layer=3, d_model=128),
          "gpt": lambda n: GPTConfig(vocab_size=VOCAB, max_seq_len=n, n_layer=2, n_head=4, d_model=128,
                                     position="rotary")}


def model_for(name, n):
    torch.manual_seed(0)
    return build_model(MODELS[name](n))


def worker(name, n, repeats):
    torch.set_num_threads(1)
    model = model_for(name, n)
    ids = torch.randint(VOCAB, (1, n + 1))

    def step():
        model.zero_grad(set_to_none=True)
        model(ids[:, :-1], targets=ids[:, 1:]).loss.backward()
    seconds, peak = time_and_peak(step, repeats)
    print(json.dumps({"variant": name, "n": n, "seconds": seconds, "peak_mb": peak / 2**20,
                      "parameters": model.num_parameters()}))


def scaling(args):
    lengths = [int(n) for n in args.lengths.split(",")]
    rows = [run_worker(Path(__file__), name, n, args.repeats, args.timeout, None)
            for n in lengths for name in MODELS]
    print("| model | parameters | " + " | ".join(f"T={n}" for n in lengths) + " | time slope | memory slope |")
    print("|---|---|" + "---|" * len(lengths) + "---|---|")
    for name in MODELS:
        mine = [r for r in rows if r["variant"] == name and "seconds" in r]
        cells = [next((f"{r['seconds'] * 1e3:.0f} ms, {r['peak_mb']:.0f} MB" for r in mine if r["n"] == n),
                      "skipped") for n in lengths]
        print(f"| {name} | {mine[0]['parameters']:,} | " + " | ".join(cells) + f" | "
              f"{loglog_slope([(r['n'], r['seconds']) for r in mine]):.2f} | "
              f"{loglog_slope([(r['n'], r['peak_mb']) for r in mine]):.2f} |")


def state_bytes(state) -> int:
    if hasattr(state, "ssm"):
        return sum(t.numel() * t.element_size() for t in state.conv + state.ssm)
    held = state.length
    return sum(t[:, :, :held].numel() * t.element_size() for t in state._keys + state._values)


@torch.no_grad()
def generation(args):
    torch.set_num_threads(1)
    print("| model | context | ms per new token | decode state |\n|---|---|---|---|")
    for name in MODELS:
        for context in (64, 2048):
            model = model_for(name, context + args.new + 1).eval()
            state = model.init_state(1, context + args.new)
            model(torch.randint(VOCAB, (1, context)), state=state)
            token, times = torch.tensor([[1]]), []
            for _ in range(args.new):
                start = time.perf_counter()
                token = model(token, state=state, only_last=True).logits[:, -1].argmax(-1, keepdim=True)
                times.append(time.perf_counter() - start)
            print(f"| {name} | {context} | {statistics.median(times) * 1e3:.2f} | "
                  f"{state_bytes(state) / 2**10:.0f} KiB |", flush=True)


def hf_pair():
    import transformers
    torch.manual_seed(0)
    config = transformers.MambaConfig(vocab_size=VOCAB, hidden_size=128, num_hidden_layers=3, state_size=16,
                                      use_cache=True, pad_token_id=0, eos_token_id=None, bos_token_id=None)
    theirs = transformers.MambaForCausalLM(config)
    ours = build_model(MambaConfig(vocab_size=VOCAB, max_seq_len=4096, n_layer=3, d_model=128))
    load_hf_state(ours, "mamba", theirs.state_dict())
    return ours, theirs


def versus_hf(args):
    torch.set_num_threads(1)
    ours, theirs = hf_pair()
    for length in map(int, args.lengths.split(",")):
        ids = torch.randint(VOCAB, (args.batch, length + 1))

        def train(model, logits_of):
            def step():
                model.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(logits_of(model).flatten(0, 1), ids[:, 1:].flatten()).backward()
            return lambda: rate(step, args.batch * length)
        ratios = interleaved_ratios({"hf": train(theirs, lambda m: m(ids[:, :-1]).logits),
                                     "attnlab": train(ours, lambda m: m(ids[:, :-1]).logits)}, "hf", args.rounds)
        print(f"train T={length} batch {args.batch}: tokens/s attnlab {ratios['attnlab'][0]:.0f}, HF "
              f"{ratios['hf'][0]:.0f}; ratio {ratios['attnlab'][1]:.2f}x (min {ratios['attnlab'][2]:.2f}, max "
              f"{ratios['attnlab'][3]:.2f})", flush=True)
    prompt = torch.randint(1, VOCAB, (1, 64))

    def ours_generate(compile: bool):
        sampling = Sampling(max_new_tokens=args.new, temperature=0, compile=compile)
        return generate(ours.eval(), prompt.tolist(), sampling)[0]

    def hf_generate():
        with torch.inference_mode():
            out = theirs.eval().generate(prompt, max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False)
        return out[0, 64:].tolist()
    start = time.perf_counter()
    assert ours_generate(compile=True) == ours_generate(compile=False) == hf_generate(), "greedy outputs differ"
    print(f"(first calls, compilation included: {time.perf_counter() - start:.0f} s)")
    ratios = interleaved_ratios({"hf": lambda: rate(hf_generate, args.new),
                                 "attnlab": lambda: rate(lambda: ours_generate(False), args.new),
                                 "attnlab compiled": lambda: rate(lambda: ours_generate(True), args.new)},
                                "hf", args.rounds)
    for name in ("attnlab", "attnlab compiled"):
        print(f"generate 64 + {args.new} tokens, {name}: tokens/s {ratios[name][0]:.1f}, HF {ratios['hf'][0]:.1f}; "
              f"ratio {ratios[name][1]:.2f}x (min {ratios[name][2]:.2f}, max {ratios[name][3]:.2f})")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        return worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["train", "generate", "hf"])
    parser.add_argument("--lengths", default=None, help="default 512,...,8192 (train) or 256,1024 (hf)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=240)
    parser.add_argument("--new", type=int, default=64, help="new tokens per generation")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    args.lengths = args.lengths or ("512,1024,2048,4096,8192" if args.what == "train" else "256,1024")
    print(machine().replace(f"{torch.get_num_threads()} threads", "1 thread"))
    {"train": scaling, "generate": generation, "hf": versus_hf}[args.what](args)


if __name__ == "__main__":
    main()
