"""Shared helpers for the benchmark scripts: interleaved timing with medians, and the
machine description that goes into RESULTS.md."""

import os
import platform
import statistics
import time

import torch


def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def interleaved_medians(runners: dict, rounds: int = 5) -> dict:
    """Call each runner once per round, in turn, so that machine noise hits all alike.
    Each runner returns a rate (bigger is better); returns the median rate per name."""
    rates = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            rates[name].append(run())
    return {name: statistics.median(values) for name, values in rates.items()}


def rate(fn, items: int, repeats: int = 1) -> float:
    """items per second of `repeats` calls of fn."""
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return items * repeats / (time.perf_counter() - start)
