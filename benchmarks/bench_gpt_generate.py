"""Generation speed: 512 new tokens, batch 1 and 8, greedy, attnlab with and without its KV
cache, against Hugging Face `generate` on the same weights (a random GPT-2 imported through
attnlab.interop). Checks that both produce the same tokens, then reports tokens/s (median of
interleaved rounds) and the ratios.

    python benchmarks/bench_gpt_generate.py [--new-tokens 512] [--rounds 3]
"""

import argparse
import tempfile

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from attnlab.inference import Sampling, generate
from attnlab.interop import import_hf
from common import interleaved_medians, machine, rate


def models(n_positions=1024, n_embd=256, n_layer=4, n_head=4):
    """-> (attnlab GPT, HF GPT2LMHeadModel) with the same random weights, vocabulary 8192."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=8192, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                        bos_token_id=None, eos_token_id=None)
    hf = GPT2LMHeadModel(config).eval()
    with tempfile.TemporaryDirectory() as directory:
        hf.save_pretrained(directory)
        ours, _ = import_hf(directory, with_tokenizer=False)
    return ours.eval(), hf


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--uncached-rounds", type=int, default=1, help="the uncached runs are slow")
    args = parser.parse_args()
    ours, hf = models()
    n = args.new_tokens
    print(f"machine: {machine()}")
    for batch in (1, 8):
        prompts = torch.randint(0, 8192, (batch, 16), generator=torch.Generator().manual_seed(batch))

        def run_ours(use_cache):
            return generate(ours, prompts.tolist(), Sampling(max_new_tokens=n, temperature=0, use_cache=use_cache))

        def run_hf(use_cache=True):
            with torch.inference_mode():
                out = hf.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=n,
                                  min_new_tokens=n, do_sample=False, use_cache=use_cache, pad_token_id=0)
            return out[:, prompts.size(1):].tolist()

        assert run_ours(True) == run_hf(), "attnlab and HF greedy outputs differ"
        tokens = batch * n
        fast = interleaved_medians({
            "attnlab KV cache": lambda: rate(lambda: run_ours(True), tokens),
            "HF generate (cache)": lambda: rate(run_hf, tokens),
        }, args.rounds)
        slow = interleaved_medians({
            "attnlab no cache": lambda: rate(lambda: run_ours(False), tokens),
        }, args.uncached_rounds)
        results = {**fast, **slow}
        print(f"\nbatch {batch}, {n} new tokens (same tokens from both: yes)")
        for name, value in results.items():
            print(f"  {name:22s} {value:9.1f} tokens/s")
        print(f"  KV cache vs no cache: {results['attnlab KV cache'] / results['attnlab no cache']:.2f}x; "
              f"attnlab vs HF generate: {results['attnlab KV cache'] / results['HF generate (cache)']:.2f}x")


if __name__ == "__main__":
    main()
