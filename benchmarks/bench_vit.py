"""Image classification inference: attnlab ViT vs Hugging Face ViTForImageClassification, the same
random weights (HF's model, saved and imported through attnlab's key map), fp32, inference_mode,
one thread, identical inputs, HF with its default SDPA attention.

Checks that both give the same logits, then reports images/s per side as the median of
interleaved rounds and the median of the per-round ratios attnlab / HF (range in brackets).

    OMP_NUM_THREADS=1 flock /tmp/attnlab-bench.lock python benchmarks/bench_vit.py [--rounds 7]
"""

import argparse
import tempfile

import torch
import transformers

from attnlab.interop import import_hf
from common import machine, throughput_against_hf

MNIST = dict(image_size=28, patch_size=7, num_channels=1, hidden_size=96, num_hidden_layers=4, num_attention_heads=4,
             intermediate_size=192, num_labels=10)  # the vit-mnist preset
SMALL = dict(image_size=224, patch_size=16, hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
             intermediate_size=1536, num_labels=1000)  # ViT-S/16
# name -> (Hugging Face config fields, batch)
CASES = {"vit-mnist (28 px, patch 7, 4 x 96)": (MNIST, 64), "vit-mnist, one image": (MNIST, 1),
         "ViT-S/16 (224 px, 12 x 384)": (SMALL, 8), "ViT-S/16, one image": (SMALL, 1)}


def pair(fields: dict):
    """(attnlab model, HF model) with the same random weights."""
    torch.manual_seed(0)
    hf = transformers.ViTForImageClassification(transformers.ViTConfig(**fields)).eval()
    with tempfile.TemporaryDirectory() as saved:
        hf.save_pretrained(saved)
        ours, _ = import_hf(saved)
    return ours, hf


def measure(name: str, fields: dict, batch: int, rounds: int, repeats: int):
    ours, hf = pair(fields)
    size, channels = fields["image_size"], fields.get("num_channels", 3)
    x = torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        diff = (ours(x).logits - hf(pixel_values=x).logits).abs().max().item()
        summary = throughput_against_hf(lambda: ours(x), lambda: hf(pixel_values=x), batch, repeats, rounds)
    (ours_rate, ratio, low, high), hf_rate = summary["attnlab"], summary["hf"][0]
    print(f"| {name} | {batch} | {ours_rate:.1f} | {hf_rate:.1f} | **{ratio:.2f}x** [{low:.2f}-{high:.2f}] | "
          f"{diff:.1e} |", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=5, help="forward passes per timed call")
    args = parser.parse_args()
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    print(machine())
    print("| model | batch | attnlab img/s | HF img/s | attnlab / HF | max abs logit diff |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, (fields, batch) in CASES.items():
        measure(name, fields, batch, args.rounds, args.repeats)


if __name__ == "__main__":
    main()
