"""Quality check: Transformer-XL and Reformer against a full-attention GPT of about the same
size, character-level tiny Shakespeare, context 1024, the same steps, batch and schedule.

    ATTNLAB_DATA=/work/shared/data python benchmarks/quality_long_lm_5b.py --steps 300

Each model is trained with `attnlab train` (fresh run directories under --out) and the best
validation loss of each run is printed with its gap to the GPT's (target: within 0.05).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ATTNLAB_DATA", ROOT.parent / "shared" / "data"))
SIZE = ["model.n_layer=2", "model.n_head=4", "model.d_model=128", "model.block_size=1024"]
MODELS = {
    "GPT (full attention)": ["model.family=gpt"],
    "Transformer-XL (segment 256, memory 256)": ["model.family=transformer_xl", "model.segment_length=256",
                                                 "model.mem_len=256"],
    "Reformer (LSH, chunk 64, 16 buckets, 2 hashes)": ["model.family=reformer", "model.chunk_length=64",
                                                       "model.n_buckets=16", "model.n_hashes=2",
                                                       "model.axial_shape=[32,32]", "model.axial_dims=[64,64]"],
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--out", default=str(ROOT / "runs" / "quality_5b"))
    args = parser.parse_args()
    common = [f"train.max_steps={args.steps}", f"train.batch_size={args.batch_size}", "train.lr=0.002",
              f"train.warmup_steps={args.steps // 10}", f"train.eval_interval={args.steps}", "train.eval_batches=20",
              "train.progress=false"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    rows = []
    for name, options in MODELS.items():
        run_dir = Path(args.out) / name.split()[0].lower()
        start = time.perf_counter()
        command = [sys.executable, "-m", "attnlab.cli", "train", "--data", str(DATA / "tinyshakespeare.txt"),
                   "--out", str(run_dir), *options, *SIZE, *common]
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            sys.exit(f"{name} failed:\n{done.stderr[-2000:]}")
        result = json.loads(done.stdout[done.stdout.index("{"):])
        rows.append((name, result["best_val_loss"], time.perf_counter() - start, done.stderr.splitlines()[0]))
        print(json.dumps({"model": name, **result}), file=sys.stderr, flush=True)
    base = rows[0][1]
    print("| model | best val loss | gap to GPT | train time |\n|---|---|---|---|")
    for name, loss, seconds, _ in rows:
        print(f"| {name} | {loss:.4f} | {loss - base:+.4f} | {seconds / 60:.1f} min |")
    for name, _, _, header in rows:
        print(f"{name}: {header}")


if __name__ == "__main__":
    main()
