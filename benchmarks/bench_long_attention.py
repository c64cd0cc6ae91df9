"""Long-sequence attention: forward + backward time and peak memory of one attention layer.

    python benchmarks/bench_long_attention.py                      # everything, n = 512 .. 16k
    python benchmarks/bench_long_attention.py --sizes 512,1024 --variants "sliding window (w=256)"
    python benchmarks/bench_long_attention.py --interleaved --sizes 4096,8192,16384 --repeats 9

One layer = q/k/v projections, the attention pattern, the output projection; batch 1,
d_model 256, 4 heads, fp32 on CPU, non-causal. Each (variant, n) runs in a fresh subprocess:
  time    median over --repeats forward + backward steps after one warm-up step;
  memory  the peak resident memory of that subprocess during the steps minus its resident memory
          just before them (Linux VmHWM, reset through /proc/self/clear_refs): everything the
          step really touched - activations kept for backward, temporaries, gradients, allocator
          slack - and nothing the interpreter, torch or the weights held before. Workers run with
          MALLOC_MMAP_THRESHOLD_=1 MiB so freed big blocks leave the resident set at once.
Sizes that are predicted to run past --max-seconds, or (dense math) to need more than
--max-dense-gb, are skipped and reported as such. Results: a JSON file, two PNG plots and
markdown tables (printed) for benchmarks/RESULTS.md.

The sweep's small mmap threshold makes every big temporary fresh memory, so its times include
page faults, and more of them for the side that allocates more. --interleaved times each
Hugging Face layer against ours in one process with the allocator as the user has it, stepping
the two alternately, and reports the median of the per-round ratios: the speed comparison.

Variants are entries of VARIANTS: a name -> Variant(build, linear, reference). `build(n)` returns
a function of x (1, n, 256) -> y (1, n, 256). Add a variant by adding an entry; the Reformer
The Reformer LSH and Transformer-XL entries come from long_variants_5b.py.
"""

import argparse
import dataclasses
import json
import os
import statistics
import sys
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from attnlab.layers.attention import MultiHeadAttention  # noqa: E402
from attnlab.layers.sparse_attention import BigBirdAttention, SlidingWindowAttention  # noqa: E402
from common import alternating_times, loglog_slope, run_worker, time_and_peak  # noqa: E402
from long_variants_5b import VARIANTS_5B  # noqa: E402

D_MODEL, N_HEAD = 256, 4
WINDOW = 256  # Longformer's attention_window: 128 keys on each side of a query
BLOCK, N_RANDOM = 64, 3  # BigBird: block size and random blocks per query block
SIZES = (512, 1024, 2048, 4096, 8192, 16384)


@dataclasses.dataclass
class Variant:
    build: Callable  # n -> module taking x (1, n, D_MODEL)
    linear: bool  # expected to scale linearly in n (the slope target applies)
    reference: str = None  # for Hugging Face variants: the attnlab variant it is compared with


def _ours_dense(backend):
    return lambda n: MultiHeadAttention(D_MODEL, N_HEAD, backend=backend)


def _ours_sliding(n):
    return SlidingWindowAttention(D_MODEL, N_HEAD, WINDOW // 2)


def _ours_bigbird(n):
    return BigBirdAttention(D_MODEL, N_HEAD, BLOCK, N_RANDOM, seed=0)


class _HFLongformer(nn.Module):
    """Hugging Face LongformerSelfAttention + an output projection: the same work as ours."""

    def __init__(self, n):
        super().__init__()
        from transformers import LongformerConfig
        from transformers.models.longformer.modeling_longformer import LongformerSelfAttention
        config = LongformerConfig(hidden_size=D_MODEL, num_attention_heads=N_HEAD, attention_window=[WINDOW],
                                  attention_probs_dropout_prob=0.0)
        self.attn, self.out = LongformerSelfAttention(config, layer_id=0), nn.Linear(D_MODEL, D_MODEL)
        self.local = torch.zeros(1, n)  # 0: local attention, no padding, no global tokens

    def forward(self, x):
        y = self.attn(x, attention_mask=self.local, is_index_masked=self.local < 0,
                      is_index_global_attn=self.local > 0, is_global_attn=False)[0]
        return self.out(y)


class _HFBigBird(nn.Module):
    """Hugging Face BigBirdBlockSparseAttention + an output projection (training mode: it draws
    its random blocks every step, as ours does)."""

    def __init__(self, n):
        super().__init__()
        from transformers import BigBirdConfig
        from transformers.models.big_bird.modeling_big_bird import BigBirdBlockSparseAttention
        config = BigBirdConfig(hidden_size=D_MODEL, num_attention_heads=N_HEAD, block_size=BLOCK,
                               num_random_blocks=N_RANDOM, max_position_embeddings=max(SIZES),
                               attention_type="block_sparse", attention_probs_dropout_prob=0.0)
        self.attn, self.out = BigBirdBlockSparseAttention(config, seed=0), nn.Linear(D_MODEL, D_MODEL)
        ones = torch.ones(1, n)
        blocked = ones.view(1, n // BLOCK, BLOCK)
        band = torch.ones(1, 1, n // BLOCK - 4, BLOCK, 3 * BLOCK)
        self.masks = (band, ones.view(1, 1, n, 1), ones.view(1, 1, 1, n), blocked, blocked)

    def forward(self, x):
        return self.out(self.attn(x, *self.masks)[0])


VARIANTS = {
    "dense math": Variant(_ours_dense("math"), linear=False),
    "PyTorch SDPA": Variant(_ours_dense("sdpa"), linear=False),
    "sliding window (w=256)": Variant(_ours_sliding, linear=True),
    "BigBird (block 64)": Variant(_ours_bigbird, linear=True),
    # Reformer LSH attention (bucket 64, 2 hashes) and Transformer-XL (segment 512, memory 512)
    **{name: Variant(build, linear=linear, reference=reference)
       for name, (build, linear, reference) in VARIANTS_5B.items()},
    "HF Longformer": Variant(_HFLongformer, linear=True, reference="sliding window (w=256)"),
    "HF BigBird": Variant(_HFBigBird, linear=True, reference="BigBird (block 64)"),
}


# -- one measurement, in its own process ----------------------------------------------------------

def measure(name, n, repeats):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    module = VARIANTS[name].build(n).train()
    x = torch.randn(1, n, D_MODEL, requires_grad=True)

    def step():
        module.zero_grad(set_to_none=True)
        x.grad = None
        module(x).square().mean().backward()

    seconds, peak = time_and_peak(step, repeats)
    return {"variant": name, "n": n, "seconds": seconds, "peak_mb": peak / 2**20, "repeats": repeats}


# glibc serves big blocks with mmap and gives them back on free, so resident memory follows what
# is alive; a fixed threshold stops it from moving blocks up to 32 MB onto the heap, where freed
# memory can stay resident and inflate the peak.
WORKER_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}


def run_one(name, n, repeats, timeout):
    return run_worker(__file__, name, n, repeats, timeout, env=WORKER_ENV)


# -- the sweep, fits, plots and tables -------------------------------------------------------------

def sweep(names, sizes, repeats, max_seconds, max_dense_gb):
    """Size by size, every variant in turn: on a shared machine the load drifts, and interleaving
    keeps the variants compared at one size under the same conditions."""
    results, last, stopped = [], {}, set()

    def skip(name, n, why):
        results.append({"variant": name, "n": n, "skipped": why})
        stopped.add(name)

    for n in sizes:
        for name in names:
            if name in stopped:
                skip(name, n, "a smaller size was skipped")
            elif name == "dense math" and 6 * N_HEAD * n * n * 4 / 2**30 > max_dense_gb:
                skip(name, n, f"needs > {max_dense_gb:g} GB")
            elif name in last and _predicted(last[name], n, repeats, VARIANTS[name].linear) > max_seconds:
                skip(name, n, f"predicted {_predicted(last[name], n, repeats, VARIANTS[name].linear):.0f} s")
            else:
                result = run_one(name, n, repeats, timeout=max_seconds * 2)
                print(json.dumps(result), file=sys.stderr, flush=True)
                results.append(result)
                last[name] = result
                if "skipped" in result:
                    stopped.add(name)
    return results


def _predicted(previous, n, repeats, linear):
    """Seconds the (repeats + 1) steps at n should take, from the previous size."""
    return previous["seconds"] * (n / previous["n"]) ** (1.2 if linear else 2.0) * (repeats + 1)


def interleaved(names, sizes, repeats):
    """Each Hugging Face variant in `names` against its attnlab reference, stepped alternately in
    this process (one warm-up round) -> markdown table of median times and median ratios."""
    torch.set_num_threads(1)
    lines = ["| n | Hugging Face layer | HF (ms) | attnlab (ms) | HF / attnlab (median of rounds, range) |",
             "|---|---|---|---|---|"]
    for n in sizes:
        for theirs in (name for name in names if VARIANTS[name].reference):
            torch.manual_seed(0)
            x = torch.randn(1, n, D_MODEL, requires_grad=True)
            modules = [VARIANTS[name].build(n).train() for name in (theirs, VARIANTS[theirs].reference)]

            def step(module):
                module.zero_grad(set_to_none=True)
                x.grad = None
                module(x).square().mean().backward()

            times = alternating_times([partial(step, module) for module in modules], repeats)
            ratios = [a / b for a, b in zip(*times)]
            lines.append(f"| {n} | {theirs} | {statistics.median(times[0]) * 1000:.0f} | "
                         f"{statistics.median(times[1]) * 1000:.0f} | {statistics.median(ratios):.2f}x "
                         f"({min(ratios):.2f}-{max(ratios):.2f}) |")
            print(lines[-1], file=sys.stderr, flush=True)
    return "\n".join(lines)


def tables(results, sizes):
    ran = {(r["variant"], r["n"]): r for r in results}
    names = list(dict.fromkeys(r["variant"] for r in results))
    head = "| variant | " + " | ".join(f"{n // 1024}k" if n >= 1024 else str(n) for n in sizes)
    lines = ["Time per forward + backward (ms, median):", "", head + " | slope (all n) | slope (n >= 2k) |",
             "|---" * (len(sizes) + 3) + "|"]
    for name in names:
        cells = [_cell(ran.get((name, n)), "seconds", 1000, "{:.0f}") for n in sizes]
        points = [(n, ran[(name, n)]["seconds"]) for n in sizes if "seconds" in ran.get((name, n), {})]
        lines.append(f"| {name} | " + " | ".join(cells) +
                     f" | {loglog_slope(points):.2f} | {loglog_slope([p for p in points if p[0] >= 2048]):.2f} |")
    lines += ["", "Peak memory of the step (MB):", "", head + " |", "|---" * (len(sizes) + 1) + "|"]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(_cell(ran.get((name, n)), "peak_mb", 1, "{:.0f}") for n in sizes)
                     + " |")
    lines += ["", "attnlab against Hugging Face (HF time / attnlab time, HF memory / attnlab memory):", "",
              "| comparison | " + " | ".join(f"{n // 1024}k" if n >= 1024 else str(n) for n in sizes) + " |",
              "|---" * (len(sizes) + 1) + "|"]
    for name in names:
        ours = VARIANTS[name].reference
        if ours is None:
            continue
        cells = []
        for n in sizes:
            a, b = ran.get((name, n), {}), ran.get((ours, n), {})
            if "seconds" in a and "seconds" in b:
                cells.append(f"{a['seconds'] / b['seconds']:.2f}x time, {a['peak_mb'] / max(b['peak_mb'], 1):.2f}x mem")
            else:
                cells.append("-")
        lines.append(f"| {name} vs {ours} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(result, key, factor, fmt):
    if result is None:
        return "-"
    if "skipped" in result:
        return "skip"
    return fmt.format(result[key] * factor)


def plot(results, out_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    for key, label, file in (("seconds", "forward + backward time (s)", "long_attention_time.png"),
                             ("peak_mb", "peak memory of the step (MB)", "long_attention_memory.png")):
        fig, ax = plt.subplots(figsize=(7, 5))
        for name in dict.fromkeys(r["variant"] for r in results):
            points = [(r["n"], r[key]) for r in results if r["variant"] == name and key in r]
            if points:
                ax.plot(*zip(*points), marker="o", linestyle="--" if name.startswith("HF") else "-", label=name)
        ax.set(xscale="log", yscale="log", xlabel="sequence length n", ylabel=label,
               title=f"one attention layer, batch 1, d_model {D_MODEL}, {N_HEAD} heads, CPU")
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / file, dpi=120)
        plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names from VARIANTS")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=120.0, help="skip a size predicted to take longer")
    parser.add_argument("--max-dense-gb", type=float, default=6.0, help="skip dense math sizes needing more memory")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--interleaved", action="store_true", help="HF layers against ours, alternating steps")
    parser.add_argument("--worker", nargs=3, metavar=("VARIANT", "N", "REPEATS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        name, n, repeats = args.worker
        print(json.dumps(measure(name, int(n), int(repeats))))
        return
    names = [v.strip() for v in args.variants.split(",")]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.interleaved:
        print(interleaved(names, sizes, args.repeats))
        return
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = sweep(names, sizes, args.repeats, args.max_seconds, args.max_dense_gb)
    (out_dir / "long_attention.json").write_text(json.dumps(results, indent=1))
    plot(results, out_dir)
    print(tables(results, sizes))


if __name__ == "__main__":
    main()
