"""The bar for CPU inference: attnlab (fp32 and dynamic INT8) against ONNX Runtime on the graph
`attnlab export --format onnx` writes (fp32; fp32 with ORT's transformer fusions; and the fused
graph with ORT's dynamic INT8 quantisation), all-MiniLM-L6-v2 on SST-2 dev sentences, batch 1 and
32, one and two threads, every contender in turns in one process.

    OMP_NUM_THREADS=1 flock /tmp/attnlab-bench.lock env PYTHONPATH=src \
        python benchmarks/onnx_bar.py [--rounds 20] [--threads 1,2] [--profile] [--out runs/onnx_bar.json]

Identical input tensors everywhere (padded to the longest sentence of the batch, as attnlab's
SentenceEncoder pads). Latency is the median over rounds (batch 1: a different sentence each
round); ratios are taken within each round, so slow drifts of a shared machine cancel.
--profile adds where the time goes: torch.profiler for attnlab, ORT's node profile for ORT.
"""

import argparse
import collections
import copy
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.transformers.optimizer import optimize_model

from attnlab.compression import quantize_model
from attnlab.data.classification import read_labelled
from attnlab.interop.hf import load_minilm
from attnlab.interop.onnx import export_onnx
from common import machine

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ATTNLAB_DATA", REPO.parent / "shared" / "data")) / "sst2"


def onnx_graphs(model, directory: Path) -> dict:
    """-> {name: path}: the exported fp32 graph, ORT's fused version of it, and that quantised."""
    export_onnx(model, directory / "fp32")
    c = model.config
    fused = optimize_model(str(directory / "fp32" / "model.onnx"), model_type="bert", num_heads=c.n_head,
                           hidden_size=c.d_model)
    fused.save_model_to_file(str(directory / "fused.onnx"))
    quantize_dynamic(directory / "fused.onnx", directory / "int8.onnx", weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})  # the fused ops' outputs
    return {"ORT fp32": directory / "fp32" / "model.onnx", "ORT fp32 fused": directory / "fused.onnx",
            "ORT INT8 dynamic (fused)": directory / "int8.onnx"}


def ort_session(path, threads, profile=False):
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_profiling = profile
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def runners(models: dict, sessions: dict) -> dict:
    """-> {name: batch -> (B, T, C) hidden states as numpy}."""
    calls = {name: (lambda batch, m=model: m(**batch).hidden_states.numpy()) for name, model in models.items()}
    for name, session in sessions.items():
        calls[name] = lambda batch, s=session: s.run(None, {k: v.numpy() for k, v in batch.items()})[0]
    return calls


def interleaved(calls: dict, batches: list) -> dict:
    """One call of each contender per batch, in turns -> {name: [milliseconds per round]}."""
    times = {name: [] for name in calls}
    for batch in batches:
        for name, call in calls.items():
            start = time.perf_counter()
            call(batch)
            times[name].append((time.perf_counter() - start) * 1000)
    return times


def summary(times: dict, baseline: str) -> dict:
    """-> {name: (median ms, median of the per-round speed ratios baseline / name)}."""
    return {name: (statistics.median(t), statistics.median(b / x for b, x in zip(times[baseline], t)))
            for name, t in times.items()}


def agreement(calls: dict, batch: dict) -> dict:
    """Max abs difference (fp32) or cosine (INT8) of each contender's mean-pooled states to attnlab fp32's."""
    mask = batch["attention_mask"].numpy()[..., None]
    pooled = {name: (call(batch) * mask).sum(1) / mask.sum(1) for name, call in calls.items()}
    reference = pooled["attnlab fp32"]
    result = {}
    for name, value in pooled.items():
        cosine = (value * reference).sum(1) / np.linalg.norm(value, axis=1) / np.linalg.norm(reference, axis=1)
        result[name] = {"max_abs_diff": float(np.abs(value - reference).max()), "min_cosine": float(cosine.min())}
    return result


def torch_profile(model, batch, repeats=10) -> dict:
    """Self CPU time per group of aten ops, ms per call, and the wall time per call."""
    groups = {"GEMM (int8)": ("quantized::", "fbgemm"), "GEMM (fp32)": ("addmm", "mm", "linear", "matmul"),
              "attention": ("scaled_dot_product", "_flash", "bmm", "softmax", "baddbmm"), "layer norm": ("layer_norm",),
              "GELU": ("gelu",)}
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(repeats):
            model(**batch)
        wall = (time.perf_counter() - start) * 1000 / repeats
    spent = collections.Counter()
    for event in prof.key_averages():
        group = next((g for g, keys in groups.items() if any(k in event.key for k in keys)), "other ops")
        spent[group] += event.self_cpu_time_total / 1000 / repeats
    spent["python and dispatch (wall - ops)"] = wall - sum(spent.values())
    return {"wall_ms": wall, **{k: round(v, 3) for k, v in spent.most_common()}}


def ort_profile(path, threads, batch, repeats=10) -> dict:
    """ORT's node time per op type, ms per call."""
    session = ort_session(path, threads, profile=True)
    feeds = {k: v.numpy() for k, v in batch.items()}
    session.run(None, feeds)
    for _ in range(repeats):
        session.run(None, feeds)
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    spent = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            spent[event["args"]["op_name"]] += event["dur"] / 1000 / (repeats + 1)
    return {k: round(v, 3) for k, v in spent.most_common(8)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="runs/onnx_bar.json", help="where the full report (JSON) goes")
    parser.add_argument("--rounds", type=int, default=20, help="batch-1 rounds; batch 32 gets a quarter")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    encoder, tokenizer = load_minilm()
    models = {"attnlab fp32": encoder.eval(), "attnlab INT8 dynamic": quantize_model(copy.deepcopy(encoder))}
    texts = random.Random(0).sample(read_labelled(DATA / "dev.tsv")[0], args.rounds + 32)
    singles = [tokenizer.batch_encode([t], max_length=args.max_length) for t in texts[:args.rounds]]
    batch32 = tokenizer.batch_encode(texts[-32:], max_length=args.max_length)
    report = {"machine": machine(), "batch32_shape": list(batch32["input_ids"].shape),
              "batch32_real_tokens": int(batch32["attention_mask"].sum())}
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        graphs = onnx_graphs(encoder, Path(tmp))
        for threads in map(int, args.threads.split(",")):
            torch.set_num_threads(threads)
            calls = runners(models, {name: ort_session(path, threads) for name, path in graphs.items()})
            if threads == 1:
                report["agreement_b32"] = agreement(calls, batch32)
            for call in calls.values():  # warm-up
                call(singles[0]), call(batch32)
            b1 = summary(interleaved(calls, singles), "attnlab fp32")
            b32 = summary(interleaved(calls, [batch32] * max(3, args.rounds // 4)), "attnlab fp32")
            report[f"{threads} thread(s)"] = {name: {"b1_ms": b1[name][0], "b1_speedup": b1[name][1],
                                                     "b32_ms": b32[name][0], "b32_speedup": b32[name][1]}
                                              for name in calls}
            print(f"\n{threads} thread(s): median ms, and speed against attnlab fp32 (per-round ratios)")
            print(f"{'':28s} {'b1 ms':>8s} {'x':>6s} {'b32 ms':>8s} {'x':>6s}")
            for name in calls:
                print(f"{name:28s} {b1[name][0]:8.2f} {b1[name][1]:6.2f} {b32[name][0]:8.1f} {b32[name][1]:6.2f}")
            if args.profile and threads == 1:
                report["profile"] = {
                    f"{name}, batch {size}": torch_profile(model, batch)
                    for name, model in models.items() for size, batch in ((1, singles[0]), (32, batch32))}
                report["profile"].update({f"{name}, batch {size}": ort_profile(graphs[name], threads, batch)
                                          for name in ("ORT fp32 fused", "ORT INT8 dynamic (fused)")
                                          for size, batch in ((1, singles[0]), (32, batch32))})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("agreement_b32", "profile") if k in report}, indent=1))


if __name__ == "__main__":
    main()
