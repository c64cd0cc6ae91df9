"""ViViT on one CPU thread, fp32: inference speed against Hugging Face, and joint against divided
space-time attention as the clip grows.

  speed    attnlab Vivit vs Hugging Face VivitForVideoClassification (attention="joint") and
           TimesformerForVideoClassification (attention="divided", TimeSformer's divided
           space-time attention), the same random weights (HF's, imported), the same clips; checks
           the logits agree, then clips/s of torch.inference_mode forwards, medians of interleaved
           rounds (each round runs both sides) and the per-round ratio attnlab / HF.
  scaling  attnlab joint vs divided attention at 8, 16 and 32 frames (64 x 64 pixels, tubelets of
           2 x 8 x 8: 64 patches per time step, 4 to 16 time steps): one training step (forward +
           backward) in a fresh process per point: median seconds and the peak resident memory
           above the loaded model.

    OMP_NUM_THREADS=1 python benchmarks/bench_vivit.py [--rounds 7] [--only speed|scaling]
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

from attnlab.interop import import_hf
from attnlab.models.base import build_model
from attnlab.models.vivit import VivitConfig
from common import interleaved_ratios, machine, run_worker, time_and_peak

# the speed configs: (name, shared HF fields, batch)
SPEED_CASES = [
    ("moving digits (8 x 32 x 32 grey, 65 tokens, width 64, 4 layers)",
     dict(image_size=32, num_frames=8, num_channels=1, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
          intermediate_size=128), 8, 32),
    ("ViViT-Ti-like (16 x 112 x 112 RGB, width 192, 12 layers)",
     dict(image_size=112, num_frames=16, num_channels=3, hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
          intermediate_size=768), 16, 2),
]
SCALING = dict(image_size=64, n_channels=3, patch_size=8, tubelet_frames=2, n_layer=4, n_head=3, d_model=192,
               ffn_hidden=768, n_labels=10)
FRAMES, SCALING_BATCH = (8, 16, 32), 2


def hf_pair(kind: str, shared: dict, patch: int):
    """(HF model, our import of its weights), both in eval mode; random weights, HF's init."""
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    if kind == "joint":
        config = transformers.VivitConfig(**shared, tubelet_size=[2, patch, patch], num_labels=10)
        theirs = transformers.VivitForVideoClassification(config)
    else:
        config = transformers.TimesformerConfig(**shared, patch_size=patch, num_labels=10)
        theirs = transformers.TimesformerForVideoClassification(config)
    with torch.no_grad():  # HF starts CLS and positions at zero: random values make the check mean more
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    with tempfile.TemporaryDirectory() as directory:
        theirs.save_pretrained(directory)
        ours, _ = import_hf(directory)
    return theirs.eval(), ours.eval()


def speed(rounds: int):
    print("| config | attention | batch | attnlab clips/s | HF clips/s | ratio (median, min-max) | logits max diff |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, shared, patch, batch in SPEED_CASES:
        for kind in ("joint", "divided"):
            theirs, ours = hf_pair(kind, shared, patch)
            x = torch.randn(batch, shared["num_frames"], shared["num_channels"], shared["image_size"],
                            shared["image_size"], generator=torch.Generator().manual_seed(1))
            with torch.inference_mode():
                diff = (ours(x).logits - theirs(x).logits).abs().max().item()
                assert diff <= 1e-4, f"{kind}: logits differ by {diff}"
                runners = {"attnlab": lambda: _rate(ours, x), "hf": lambda: _rate(theirs, x)}
                summary = interleaved_ratios(runners, baseline="hf", rounds=rounds)
            rate, ratio, low, high = summary["attnlab"]
            hf_name = "Vivit" if kind == "joint" else "Timesformer"
            print(f"| {name} | {kind} (HF {hf_name}, {theirs.config._attn_implementation}) | {batch} | {rate:.2f} | "
                  f"{summary['hf'][0]:.2f} | {ratio:.2f}x ({low:.2f}-{high:.2f}) | {diff:.1e} |", flush=True)


def _rate(model, x, repeats: int = 3) -> float:
    """clips/s of `repeats` forwards."""
    start = time.perf_counter()
    for _ in range(repeats):
        model(x)
    return len(x) * repeats / (time.perf_counter() - start)


def scaling_worker(attention: str, frames: int, repeats: int) -> dict:
    torch.manual_seed(0)
    config = VivitConfig(**SCALING, n_frames=frames, attention=attention)
    model = build_model(config).train()
    x = torch.randn(SCALING_BATCH, frames, 3, 64, 64)
    labels = torch.zeros(SCALING_BATCH, dtype=torch.long)

    def step():
        model.zero_grad(set_to_none=True)
        model(x, labels=labels).loss.backward()

    seconds, peak = time_and_peak(step, repeats)
    return {"variant": attention, "n": frames, "tokens": config.max_seq_len, "seconds": seconds,
            "peak_mb": peak / 2**20}


def scaling(repeats: int):
    print(f"training step (forward + backward), batch {SCALING_BATCH}, {json.dumps(SCALING)}")
    print("| frames | tokens | joint s/step | divided s/step | divided / joint time | joint peak MB | "
          "divided peak MB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for frames in FRAMES:
        rows = {kind: run_worker(Path(__file__), kind, frames, repeats, timeout=600) for kind in ("joint", "divided")}
        if any("skipped" in row for row in rows.values()):
            print(f"| {frames} | skipped: {rows} |")
            continue
        joint, divided = rows["joint"], rows["divided"]
        print(f"| {frames} | {joint['tokens']} | {joint['seconds']:.3f} | {divided['seconds']:.3f} | "
              f"{divided['seconds'] / joint['seconds']:.2f} | {joint['peak_mb']:.0f} | {divided['peak_mb']:.0f} |",
              flush=True)


def main():
    if sys.argv[1:2] == ["--worker"]:
        torch.set_num_threads(1)
        name, n, repeats = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        print(json.dumps(scaling_worker(name, n, repeats)))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=5, help="timed training steps per scaling point")
    parser.add_argument("--only", choices=("speed", "scaling"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {machine()}; transformers {transformers.__version__}; fp32")
    if args.only != "scaling":
        speed(args.rounds)
    if args.only != "speed":
        scaling(args.repeats)


if __name__ == "__main__":
    main()
