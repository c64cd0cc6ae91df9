"""Which selective scan is fastest on this machine: fused, sequential, chunked or associative.

    flock /tmp/attnlab-bench.lock env OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/mamba_scan.py

One SelectiveSSM layer (d_model 128, inner 256, state 16), fp32, one thread: forward + backward
of mean(y^2) (training) and a no-grad forward (prefill), for each sequence length; the four
scans run interleaved in one process, each the median of --rounds rounds after a warm-up.
"""

import argparse
import statistics
import time

import torch

from attnlab.layers.selective_scan import SCANS, SelectiveSSM
from common import machine


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def steps(layer, x):
    def train():
        layer.zero_grad(set_to_none=True)
        layer(x)[0].square().mean().backward()

    def prefill():
        with torch.no_grad():
            layer(x)
    return {"train": train, "prefill": prefill}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="128,512,2048,8192")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(machine())
    print("| T | pass | " + " | ".join(f"{s} (ms)" for s in SCANS) + " | fastest |\n|---|---|" + "---|" * len(SCANS) + "---|")
    for length in map(int, args.lengths.split(",")):
        torch.manual_seed(0)
        x = torch.randn(args.batch, length, 128)
        runs = {scan: steps(SelectiveSSM(128, scan=scan), x) for scan in SCANS}
        for kind in ("train", "prefill"):
            times = {scan: [] for scan in SCANS}
            for round_ in range(args.rounds + 1):
                for scan in SCANS:
                    spent = timed(runs[scan][kind])
                    if round_:
                        times[scan].append(spent)
            medians = {scan: statistics.median(t) * 1e3 for scan, t in times.items()}
            best = min(medians, key=medians.get)
            print(f"| {length} | {kind} | " + " | ".join(f"{medians[s]:.1f}" for s in SCANS) + f" | {best} |",
                  flush=True)


if __name__ == "__main__":
    main()
