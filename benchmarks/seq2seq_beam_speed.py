"""Beam-search decoding speed: attnlab vs Hugging Face `generate` on the same weights.

A MarianMT-shaped model (the original Transformer: post-LN, sinusoidal positions) with random
weights is built in Hugging Face, imported into attnlab through the key map, and both decode
the same batch of 8 sources with beam 4 for exactly 64 new tokens (no eos, so every run does
the same work). Reports median seconds over repeats and the speed ratio; checks that both
produce the same token sequences.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/seq2seq_beam_speed.py
"""

import argparse
import statistics
import tempfile
import time

import torch
from transformers import MarianConfig, MarianMTModel

from attnlab.interop import import_hf
from attnlab.inference.seq2seq import BeamSearch, beam_search


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = MarianConfig(vocab_size=8000, d_model=256, encoder_layers=3, decoder_layers=3, encoder_attention_heads=4,
                          decoder_attention_heads=4, encoder_ffn_dim=1024, decoder_ffn_dim=1024,
                          max_position_embeddings=256, activation_function="swish", scale_embedding=True,
                          pad_token_id=2, eos_token_id=1, decoder_start_token_id=2, forced_eos_token_id=None)
    hf = MarianMTModel(config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours, _ = import_hf(tmp, with_tokenizer=False)
    lengths = torch.randint(10, 30, (args.batch,), generator=torch.Generator().manual_seed(1))
    sources = [torch.randint(3, 8000, (int(n),)).tolist() + [1] for n in lengths]
    ids = torch.full((args.batch, max(map(len, sources))), 2)
    mask = torch.zeros_like(ids)
    for row, source in enumerate(sources):
        ids[row, :len(source)], mask[row, :len(source)] = torch.tensor(source), 1

    def run_hf():
        with torch.no_grad():
            return hf.generate(input_ids=ids, attention_mask=mask, num_beams=args.beams, do_sample=False,
                               max_new_tokens=args.new_tokens, min_new_tokens=0, eos_token_id=None,
                               length_penalty=1.0, early_stopping=False)

    options = BeamSearch(num_beams=args.beams, max_new_tokens=args.new_tokens)

    def run_ours():
        return beam_search(ours, sources, options, stop_at_eos=False)

    hf_tokens = [row[1:] for row in run_hf().tolist()]  # warm-up, and the parity check
    our_tokens = [hyps[0].tokens for hyps in run_ours()]
    same = sum(a == b for a, b in zip(hf_tokens, our_tokens))
    times = {"attnlab": [], "hf": []}
    for _ in range(args.repeats):  # interleaved, so both sides see the same machine load
        for name, fn in (("attnlab", run_ours), ("hf", run_hf)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    ours_s, hf_s = statistics.median(times["attnlab"]), statistics.median(times["hf"])
    print(f"beam {args.beams}, batch {args.batch}, {args.new_tokens} new tokens, {args.threads} thread(s), "
          f"{args.repeats} repeats; model {sum(p.numel() for p in ours.parameters()) / 1e6:.1f}M parameters")
    print(f"same token sequences: {same}/{args.batch}")
    print(f"attnlab median {ours_s:.3f} s   HF generate median {hf_s:.3f} s   speed-up {hf_s / ours_s:.2f}x")
    print(f"attnlab all: {[round(t, 3) for t in times['attnlab']]}  HF all: {[round(t, 3) for t in times['hf']]}")


if __name__ == "__main__":
    main()
