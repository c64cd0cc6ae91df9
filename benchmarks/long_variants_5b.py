"""Reformer LSH and Transformer-XL variants for benchmarks/bench_long_attention.py, plus a
stand-alone runner for them and for the Reformer against Hugging Face.

    python benchmarks/long_variants_5b.py                   # layer sweep, n = 512 .. 16k
    python benchmarks/long_variants_5b.py --sizes 4096,8192 --variants "LSH (bucket 64 x 2 hashes),HF Reformer LSH"
    python benchmarks/long_variants_5b.py --models          # whole ReformerModel vs ours at 4k, 8k, 16k
    python benchmarks/long_variants_5b.py --models --interleaved --sizes 4096       # the same, alternating steps

Each builder takes n and returns a module mapping x (1, n, 256) -> (1, n, 256): one attention
layer (projections, the attention pattern, the output projection), batch 1, d_model 256,
4 heads, as in the shared script. Drop VARIANTS_5B into its VARIANTS dict at merge.

  LSH (bucket 64 x 2 hashes)     attnlab LSHSelfAttention, chunks of 64, n/64 buckets, 2 rounds,
                                fresh random rotations every step (training), non-causal
  HF Reformer LSH               transformers' LSHSelfAttention (same settings) + output Linear
  Transformer-XL (segment 512)  attnlab RelativeMultiHeadAttention over segments of 512 with a
                                memory of 512 (the previous segment, no gradient), causal; the
                                first segment has no memory (the start of a text)
  Transformer-XL (segment 512;  the same, but the first segment too has a memory of 512 carried
    memory carried in)          in from the text before (a training step in the steady state)

Time: median of --repeats forward + backward steps after a warm-up, one thread, each (variant,
n) in a fresh subprocess. --models --interleaved times the two whole models in one process,
alternating steps (ABAB...), and reports the median of the per-round ratios; for single layers
that is `bench_long_attention.py --interleaved`. Memory: peak resident memory of the step minus
the resident memory before it (Linux VmHWM reset through /proc/self/clear_refs).
"""

import argparse
import json
import math
import statistics
import sys
from functools import partial
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from attnlab.layers import LSHSelfAttention  # noqa: E402
from attnlab.layers.relative_attention import RelativeMultiHeadAttention  # noqa: E402
from common import alternating_times, loglog_slope, run_worker, time_and_peak  # noqa: E402

D_MODEL, N_HEAD = 256, 4
BUCKET, N_HASHES = 64, 2  # LSH: chunk (bucket) length, hashing rounds
SEGMENT = 512  # Transformer-XL segment and memory length
SIZES = (512, 1024, 2048, 4096, 8192, 16384)


def n_buckets(n):
    """About one bucket per chunk, as the Reformer recommends (n / 64, at least 2)."""
    return max(2, n // BUCKET)


def ours_lsh(n):
    return LSHSelfAttention(D_MODEL, N_HEAD, n_buckets=n_buckets(n), n_hashes=N_HASHES, chunk_length=BUCKET)


class HFReformerLSH(nn.Module):
    """Hugging Face LSHSelfAttention + an output projection: the same work as ours."""

    def __init__(self, n):
        super().__init__()
        from transformers import ReformerConfig
        from transformers.models.reformer.modeling_reformer import LSHSelfAttention as HFLSH
        config = ReformerConfig(hidden_size=D_MODEL, num_attention_heads=N_HEAD, attention_head_size=D_MODEL // N_HEAD,
                                lsh_attn_chunk_length=BUCKET, num_buckets=n_buckets(n), num_hashes=N_HASHES,
                                lsh_attention_probs_dropout_prob=0.0, is_decoder=False, attn_layers=["lsh"],
                                max_position_embeddings=max(SIZES))
        self.attn, self.out = HFLSH(config, layer_idx=0), nn.Linear(D_MODEL, D_MODEL, bias=False)

    def forward(self, x):
        return self.out(self.attn(x).hidden_states)


class TransformerXLAttention(nn.Module):
    """One relative attention layer run segment by segment, each segment attending to the
    previous one as its memory (no gradient into the memory).

    carried_in: the first segment also has a memory, the hidden states of the text before x, as
    in training where each batch continues the previous one and inherits its memory (the
    steady state); otherwise the first segment starts with none (the start of a text)."""

    def __init__(self, n, segment=SEGMENT, carried_in=False):
        super().__init__()
        self.attn, self.segment = RelativeMultiHeadAttention(D_MODEL, N_HEAD), segment
        generator = torch.Generator().manual_seed(1)
        self.register_buffer("carried_in", torch.randn(1, segment, D_MODEL, generator=generator) if carried_in else None)

    def forward(self, x):
        outputs, memory = [], self.carried_in
        for part in x.split(self.segment, dim=1):
            outputs.append(self.attn(part, memory=memory))
            memory = part.detach()[:, -self.segment:]
        return torch.cat(outputs, dim=1)


VARIANTS_5B = {  # name -> (build(n), expected to scale linearly, Hugging Face counterpart of)
    "LSH (bucket 64 x 2 hashes)": (ours_lsh, True, None),
    "Transformer-XL (segment 512)": (TransformerXLAttention, True, None),
    "Transformer-XL (segment 512; memory carried in)": (partial(TransformerXLAttention, carried_in=True), True, None),
    "HF Reformer LSH": (HFReformerLSH, True, "LSH (bucket 64 x 2 hashes)"),
}


# -- whole models: attnlab Reformer vs Hugging Face ReformerModel ------------------------------------

def model_pair(n):
    """Two LSH layers, d_model 256, 4 heads, axial positions, the same weights on both sides."""
    import transformers
    from attnlab.interop import load_hf_state
    from attnlab.interop.reformer import config_from_hf
    from attnlab.models import Reformer
    side = 2 ** math.ceil(math.log2(n) / 2)
    config = transformers.ReformerConfig(
        hidden_size=D_MODEL, num_attention_heads=N_HEAD, attention_head_size=D_MODEL // N_HEAD,
        attn_layers=["lsh", "lsh"], lsh_attn_chunk_length=BUCKET, num_buckets=n_buckets(n), num_hashes=N_HASHES,
        axial_pos_shape=[side, n // side], axial_pos_embds_dim=[64, 192], max_position_embeddings=n,
        feed_forward_size=1024, vocab_size=256, hidden_dropout_prob=0.0, lsh_attention_probs_dropout_prob=0.0,
        is_decoder=True)
    theirs = transformers.ReformerModelWithLMHead(config)
    ours = load_hf_state(Reformer(config_from_hf(config.to_dict(), "lm", ())), "reformer", theirs.state_dict())
    return ours, theirs


def build_model_step(name, n):
    ours, theirs = model_pair(n)
    ids = torch.randint(0, 256, (1, n), generator=torch.Generator().manual_seed(0))
    if name == "attnlab Reformer":
        return ours.train(), lambda: ours(ids, targets=ids).loss
    return theirs.train(), lambda: theirs(ids, labels=ids).loss


MODEL_VARIANTS = ("attnlab Reformer", "HF ReformerModelWithLMHead")


# -- measuring ---------------------------------------------------------------------------------------

def measure(name, n, repeats):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    if name in MODEL_VARIANTS:
        module, loss = build_model_step(name, n)
    else:
        module = VARIANTS_5B[name][0](n).train()
        x = torch.randn(1, n, D_MODEL, requires_grad=True)

        def loss():
            return module(x).square().mean()

    def step():
        module.zero_grad(set_to_none=True)
        loss().backward()

    seconds, peak = time_and_peak(step, repeats)
    return {"variant": name, "n": n, "seconds": seconds, "peak_mb": peak / 2**20, "repeats": repeats}


def run_one(name, n, repeats, timeout):
    return run_worker(__file__, name, n, repeats, timeout)


def interleaved(sizes, repeats):
    """Our Reformer and Hugging Face's, stepped alternately."""
    torch.set_num_threads(1)
    lines = ["| n | attnlab Reformer model (ms) | HF Reformer model (ms) | HF / attnlab (median of rounds) |",
             "|---|---|---|---|"]
    for n in sizes:
        torch.manual_seed(0)
        steps = [build_model_step(name, n) for name in MODEL_VARIANTS]

        def step(module, loss):
            module.zero_grad(set_to_none=True)
            loss().backward()

        times = alternating_times([partial(step, *pair) for pair in steps], repeats)
        ratio = statistics.median(b / a for a, b in zip(*times))
        lines.append(f"| {n} | {statistics.median(times[0]) * 1000:.0f} | {statistics.median(times[1]) * 1000:.0f} | "
                     f"{ratio:.2f}x |")
        print(lines[-1], file=sys.stderr, flush=True)
    return "\n".join(lines)


def table(results, sizes, pairs):
    ran = {(r["variant"], r["n"]): r for r in results}
    names = list(dict.fromkeys(r["variant"] for r in results))
    head = "| variant | " + " | ".join(f"{n // 1024}k" if n >= 1024 else str(n) for n in sizes)
    lines = [head + " | slope |", "|---" * (len(sizes) + 2) + "|"]
    for name in names:
        cells, points = [], []
        for n in sizes:
            r = ran.get((name, n))
            if r is None or "seconds" not in r:
                cells.append("-" if r is None else "skip")
                continue
            cells.append(f"{r['seconds'] * 1000:.0f} ms / {r['peak_mb']:.0f} MB")
            points.append((n, r["seconds"]))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {loglog_slope(points):.2f} |")
    for theirs, ours in pairs:
        cells = []
        for n in sizes:
            a, b = ran.get((theirs, n), {}), ran.get((ours, n), {})
            ok = "seconds" in a and "seconds" in b
            cells.append(f"{a['seconds'] / b['seconds']:.2f}x faster, {a['peak_mb'] / max(b['peak_mb'], 1):.2f}x "
                         "less memory" if ok else "-")
        lines.append(f"| {ours} vs {theirs} | " + " | ".join(cells) + " | |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--variants", default=",".join(VARIANTS_5B))
    parser.add_argument("--models", action="store_true", help="whole Reformer models instead of single layers")
    parser.add_argument("--interleaved", action="store_true", help="with --models: the two models, alternating steps")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "long_variants_5b.json"))
    parser.add_argument("--worker", nargs=3, metavar=("VARIANT", "N", "REPEATS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        name, n, repeats = args.worker
        print(json.dumps(measure(name, int(n), int(repeats))))
        return
    if args.interleaved:
        if not args.models:
            parser.error("--interleaved compares whole models (--models); for layers use bench_long_attention.py "
                         "--interleaved")
        print(interleaved([int(s) for s in args.sizes.split(",")], args.repeats))
        return
    names = list(MODEL_VARIANTS) if args.models else [v.strip() for v in args.variants.split(",")]
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    for name in names:
        for n in sizes:
            result = run_one(name, n, args.repeats, args.timeout)
            print(json.dumps(result), file=sys.stderr, flush=True)
            results.append(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    pairs = ([(MODEL_VARIANTS[1], MODEL_VARIANTS[0])] if args.models else
             [(name, ref) for name, (_, _, ref) in VARIANTS_5B.items() if ref and name in names and ref in names])
    print(table(results, sizes, pairs))


if __name__ == "__main__":
    main()
