"""AST inference speed: attnlab against Hugging Face ASTForAudioClassification with the same config and
the same weights (exported by attnlab, loaded by transformers), in one process, interleaved rounds,
one thread. Prints one JSON line: clips per second (medians) and the per-round ratio.

    OMP_NUM_THREADS=1 flock /tmp/attnlab-bench.lock python benchmarks/bench_ast.py --preset ast-small-speech
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
import transformers
from common import machine, throughput_against_hf

from attnlab.interop import export_hf
from attnlab.models import build_model, preset


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="ast-small-speech")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=10, help="forward passes per timed round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ours = build_model(preset(args.preset, dropout=0.0, attn_dropout=0.0)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        export_hf(ours, Path(tmp) / "hf")
        theirs = transformers.ASTForAudioClassification.from_pretrained(Path(tmp) / "hf").eval()
    c = ours.config
    values = torch.randn(args.batch, c.max_length, c.num_mel_bins)
    with torch.inference_mode():
        assert (ours(values).logits - theirs(input_values=values).logits).abs().max() < 1e-4
        summary = throughput_against_hf(lambda: ours(values), lambda: theirs(input_values=values), args.batch,
                                        args.repeats, args.rounds)
    record = {"preset": args.preset, "tokens": c.max_seq_len, "batch": args.batch, "machine": machine(),
              "transformers": transformers.__version__, "hf_attn": theirs.config._attn_implementation,
              "clips_per_s": {name: round(s[0], 1) for name, s in summary.items()},
              "speedup_median": round(summary["attnlab"][1], 3),
              "speedup_range": [round(summary["attnlab"][2], 3), round(summary["attnlab"][3], 3)]}
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    sys.exit(main() and 0)
