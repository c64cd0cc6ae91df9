"""DDP on CPU: samples/s of `attnlab train` with 2 gloo processes vs 1, and the scaling
efficiency (samples/s with 2 processes / (2 x samples/s with 1)).

Each process gets one CPU thread and the same per-process batch (weak scaling), so 2 processes
do twice the work per step on twice the cores. Data:
tinyshakespeare from ATTNLAB_DATA (default <repo>/../shared/data).

    ATTNLAB_DATA=/work/shared/data python benchmarks/ddp_scaling.py [--steps 60 --repeats 3]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ATTNLAB_DATA", REPO.parent / "shared" / "data"))


def samples_per_s(run_dir: Path, block_size: int) -> float:
    """Median over logged windows (the first, with start-up, left out) of global tokens/s / T."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in records if "tokens_per_s" in r][1:]
    return statistics.median(rates) / block_size


def train(out: Path, processes: int, threads: int, args) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": str(threads)}
    launcher = [sys.executable, "-m", "attnlab.cli"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                    str(processes), "-m", "attnlab.cli"]
    overrides = ["model.preset=gpt2-nano", "model.activation=gelu", f"model.max_seq_len={args.block_size}",
                 f"train.batch_size={args.batch_size}", f"train.max_steps={args.steps}", "train.log_interval=10",
                 f"train.eval_interval={args.steps}", "train.eval_batches=1", "train.progress=false",
                 "train.device=cpu"]
    subprocess.run(launcher + ["train", "--data", str(DATA / "tinyshakespeare.txt"), "--out", str(out), *overrides],
                   env=env, check=True, capture_output=True)
    return samples_per_s(out, args.block_size)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=8, help="per process")
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    setups = {"1 process, 1 thread": (1, 1), "2 processes (DDP, gloo), 1 thread each": (2, 1)}
    rates = {name: [] for name in setups}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):  # interleaved, so machine noise hits every setup alike
            for i, (name, (procs, threads)) in enumerate(setups.items()):
                rates[name].append(train(Path(tmp) / f"{repeat}-{i}", procs, threads, args))
                print(f"{name}: {rates[name][-1]:.1f} samples/s", flush=True)
    print("\n| setup | samples/s (median of runs) | runs |\n| --- | --- | --- |")
    medians = {name: statistics.median(r) for name, r in rates.items()}
    for name, r in rates.items():
        print(f"| {name} | {medians[name]:.1f} | {', '.join(f'{x:.1f}' for x in r)} |")
    one, two = medians["1 process, 1 thread"], medians["2 processes (DDP, gloo), 1 thread each"]
    print(f"\nspeed-up 2 processes vs 1: {two / one:.2f}x; scaling efficiency {two / (2 * one):.0%}")


if __name__ == "__main__":
    main()
