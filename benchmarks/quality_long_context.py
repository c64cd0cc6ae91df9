"""Quality check: long-context variants against a full-attention GPT of the same size.

    ATTNLAB_DATA=/work/shared/data python benchmarks/quality_long_context.py [--steps 600]

Each variant is trained with `attnlab train` (the command line users run) on tiny Shakespeare,
character level, context 1024, with the same seed, data order, size and steps; the script reports
each run's best validation loss and its gap to the full-attention GPT (target: within 0.05).
Variants are entries of RUNS: a name -> model overrides; the Transformer-XL and Reformer entries
from branch issue-5b belong in the marked place.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ATTNLAB_DATA", ROOT.parent / "shared" / "data"))

SIZE = ["model.block_size=1024", "model.n_layer=2", "model.n_head=4", "model.d_model=64", "model.position=rotary"]
RUNS = {
    "full-attention GPT": [],
    "sliding-window GPT (window 128)": ["model.attn_window=128"],
    # -- from branch issue-5b: "Transformer-XL (segment 256, memory 256)": [...], "Reformer": [...]
}


def train(name, overrides, steps, batch_size, out_dir):
    run_dir = out_dir / name.split(" (")[0].replace(" ", "-")
    cmd = [sys.executable, "-m", "attnlab.cli", "train", "--data", str(DATA / "tinyshakespeare.txt"),
           "--out", str(run_dir), *SIZE, *overrides, f"train.max_steps={steps}", f"train.batch_size={batch_size}",
           f"train.eval_interval={steps // 2}", "train.eval_batches=4", "train.warmup_steps=50", "train.lr=0.003",
           "train.min_lr=0.0003", "train.progress=false", "train.seed=0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-2000:]}")
    summary = done.stdout[done.stdout.rindex("\n{") + 1:] if not done.stdout.startswith("{") else done.stdout
    return json.loads(summary)["best_val_loss"]  # the run's closing JSON summary


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--out", help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        losses = {name: train(name, overrides, args.steps, args.batch_size, out) for name, overrides in RUNS.items()}
    full = losses["full-attention GPT"]
    print("| model | best val loss (nats/char) | gap to full attention |\n|---|---|---|")
    for name, loss in losses.items():
        print(f"| {name} | {loss:.4f} | {loss - full:+.4f} |")


if __name__ == "__main__":
    main()
