"""Shared helpers for the benchmark scripts: interleaved timing with medians, and the
machine description that goes into RESULTS.md."""

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def interleaved_rates(runners: dict, rounds: int = 5) -> dict:
    """Call each runner once per round, in turn, so that machine noise hits all alike.
    Each runner returns a rate (bigger is better). -> {name: [rate of each round]}."""
    rates = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            rates[name].append(run())
    return rates


def interleaved_medians(runners: dict, rounds: int = 5) -> dict:
    """The median rate per name over interleaved rounds."""
    return {name: statistics.median(values) for name, values in interleaved_rates(runners, rounds).items()}


def interleaved_ratios(runners: dict, baseline: str, rounds: int = 5) -> dict:
    """Each runner divided by `baseline` within every round, so that slow drifts of the machine
    cancel. -> {name: (median rate, median ratio, min ratio, max ratio)}."""
    rates = interleaved_rates(runners, rounds)
    summary = {}
    for name, values in rates.items():
        ratios = [value / base for value, base in zip(values, rates[baseline])]
        summary[name] = (statistics.median(values), statistics.median(ratios), min(ratios), max(ratios))
    return summary


def throughput_against_hf(ours, theirs, items: int, repeats: int, rounds: int) -> dict:
    """Items per second of ours() and of theirs() (the Hugging Face side), each warmed up once and then
    timed in interleaved rounds -> interleaved_ratios' summary, keys "attnlab" and "hf"."""
    runners = {"attnlab": lambda: rate(ours, items, repeats), "hf": lambda: rate(theirs, items, repeats)}
    for run in runners.values():
        run()  # warm-up
    return interleaved_ratios(runners, baseline="hf", rounds=rounds)


def alternating_times(steps: list, rounds: int) -> list:
    """Call each step once per round, in turn, after one warm-up round -> [[seconds of each
    round] per step]: the steps share the machine's drifts, for per-round ratios."""
    times = [[] for _ in steps]
    for round_ in range(rounds + 1):
        for step, spent in zip(steps, times):
            start = time.perf_counter()
            step()
            if round_:
                spent.append(time.perf_counter() - start)
    return times


def rate(fn, items: int, repeats: int = 1) -> float:
    """items per second of `repeats` calls of fn."""
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return items * repeats / (time.perf_counter() - start)


def resident_bytes(field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process, from /proc/self/status (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} missing from /proc/self/status")


def time_and_peak(step, repeats: int):
    """-> (median seconds of `repeats` calls after one warm-up, peak resident bytes above the
    resident size before the first call)."""
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current size
    before = resident_bytes("VmRSS")
    step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times), resident_bytes("VmHWM") - before


def run_worker(script, name, n, repeats, timeout, env=None) -> dict:
    """Run `script --worker NAME N REPEATS` in a fresh process; its last stdout line is a JSON
    record, or the record says why the size was skipped."""
    cmd = [sys.executable, str(script), "--worker", name, str(n), str(repeats)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"variant": name, "n": n, "skipped": f"ran past {timeout:.0f} s"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"variant": name, "n": n, "skipped": f"failed: {last[:160]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def loglog_slope(points):
    """Least-squares slope of log(seconds) against log(n)."""
    if len(points) < 2:
        return float("nan")
    xs, ys = [math.log(n) for n, _ in points], [math.log(s) for _, s in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
