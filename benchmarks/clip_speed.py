"""CLIP embedding throughput: attnlab's Clip vs Hugging Face CLIPModel, the same random weights (HF's
model, saved and imported through attnlab's key map), fp32, inference_mode, one thread, identical
inputs, HF with its default SDPA attention.

Images: image_features vs get_image_features; texts (right-padded, with HF's attention mask):
text_features vs get_text_features, both the projected features before normalisation. Checks that
both sides give the same features, then reports items/s per side as the median of interleaved
rounds and the median of the per-round ratios attnlab / HF (range in brackets).

    OMP_NUM_THREADS=1 flock /tmp/attnlab-bench.lock python benchmarks/clip_speed.py [--rounds 7]
"""

import argparse
import tempfile

import torch
import transformers

from attnlab.interop import import_hf
from attnlab.interop.clip import config_to_hf
from attnlab.models.base import PRESETS
from common import machine, throughput_against_hf

# name -> (preset, image batch, text batch, text length in tokens before padding)
CASES = {"clip-mnist (28 px, 4 x 96 ViT, 3 x 96 text)": ("clip-mnist", 64, 64, 12),
         "clip-mnist, one item": ("clip-mnist", 1, 1, 12),
         "ViT-B/32 shape (224 px, 12 x 768 ViT, 12 x 512 text)": ("clip-vit-base-patch32", 2, 8, 20)}
PADDED = 4  # padding after the longest text of a batch


def pair(preset: str):
    """(attnlab model, HF model) with the same random weights."""
    torch.manual_seed(0)
    fields = config_to_hf(PRESETS[preset])
    hf = transformers.CLIPModel(transformers.CLIPConfig(text_config=fields["text_config"],
                                                        vision_config=fields["vision_config"],
                                                        projection_dim=fields["projection_dim"])).eval()
    with tempfile.TemporaryDirectory() as saved:
        hf.save_pretrained(saved)
        ours, _ = import_hf(saved)
    return ours.eval(), hf


def texts(config, batch: int, length: int, generator: torch.Generator) -> tuple:
    """Right-padded ids (B, length + PADDED) whose rows end (at lengths length - 3 .. length) in the
    token each pooling rule finds (argmax: the largest id), and their attention mask."""
    end = config.eos_token_id if config.text_pooling == "eos" else config.vocab_size - 1
    ids = torch.randint(5, config.vocab_size - 1, (batch, length + PADDED), generator=generator)
    ids[ids == config.eos_token_id] = 5
    mask = torch.ones_like(ids)
    for row in range(batch):
        last = length - 1 - row % 4
        ids[row, last], ids[row, last + 1:], mask[row, last + 1:] = end, 0, 0
    return ids, mask


def measure(name: str, preset: str, image_batch: int, text_batch: int, length: int, rounds: int, repeats: int):
    ours, hf = pair(preset)
    c = ours.config
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(image_batch, c.n_channels, c.image_size, c.image_size, generator=generator)
    ids, mask = texts(c, text_batch, length, generator)
    cases = {"images": (image_batch, lambda: ours.image_features(x), lambda: hf.get_image_features(pixel_values=x)),
             "texts": (text_batch, lambda: ours.text_features(ids, mask),
                       lambda: hf.get_text_features(input_ids=ids, attention_mask=mask))}
    with torch.inference_mode():
        for what, (batch, mine, theirs) in cases.items():
            diff = (mine() - theirs().pooler_output).abs().max().item()
            summary = throughput_against_hf(mine, theirs, batch, repeats, rounds)
            (ours_rate, ratio, low, high), hf_rate = summary["attnlab"], summary["hf"][0]
            print(f"| {name} | {what} | {batch} | {ours_rate:.1f} | {hf_rate:.1f} | **{ratio:.2f}x** "
                  f"[{low:.2f}-{high:.2f}] | {diff:.1e} |", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=5, help="forward passes per timed call")
    args = parser.parse_args()
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    print(machine())
    print("| model | input | batch | attnlab items/s | HF items/s | attnlab / HF | max abs feature diff |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, (preset, image_batch, text_batch, length) in CASES.items():
        measure(name, preset, image_batch, text_batch, length, args.rounds, args.repeats)


if __name__ == "__main__":
    main()
