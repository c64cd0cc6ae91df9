"""Measuring a model for deployment and writing the comparison: Markdown table + PNG chart.

Latency is wall-clock time of one forward pass on CPU over real inputs at batch 1 and batch
32 (p50 and p95 over repeats); throughput is 32 / p50 at batch 32.
"""

import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from .quantize import QuantizedLinear

COLUMNS = [("parameters", "parameters", "{:,}"), ("disk_mb", "size on disk (MB)", "{:.1f}"),
           ("b1_p50_ms", "batch 1 p50 (ms)", "{:.1f}"), ("b1_p95_ms", "batch 1 p95 (ms)", "{:.1f}"),
           ("b32_p50_ms", "batch 32 p50 (ms)", "{:.0f}"), ("b32_p95_ms", "batch 32 p95 (ms)", "{:.0f}"),
           ("throughput", "sentences/s (b32)", "{:.0f}"), ("accuracy", "accuracy", "{:.4f}")]


def weight_count(model) -> int:
    """Parameters, counting a quantised layer's weights as the float weights they stand for."""
    total = sum(p.numel() for p in model.parameters())
    for module in model.modules():
        if isinstance(module, QuantizedLinear):
            total += module.in_features * module.out_features
        elif isinstance(module, torch.ao.nn.quantized.Linear):  # PyTorch's own (weight + bias)
            total += module.in_features * module.out_features + module.out_features
    return total


def disk_bytes(model) -> int:
    """Bytes of the saved weights: our checkpoint format, or torch.save for torch.ao models."""
    from ..checkpoint import WEIGHTS_FILE, save_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        if any(type(m).__module__.startswith("torch.ao.") for m in model.modules()):
            torch.save(model.state_dict(), Path(tmp) / "model.pt")
            return (Path(tmp) / "model.pt").stat().st_size
        save_checkpoint(Path(tmp) / "ck", model)
        return (Path(tmp) / "ck" / WEIGHTS_FILE).stat().st_size


@torch.inference_mode()
def latency_ms(model, batch: dict, repeats: int, warmup: int = 2) -> tuple:
    """(p50, p95) milliseconds of model(**batch)."""
    model.eval()
    for _ in range(warmup):
        model(**batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(**batch)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]


def measure(model, tokenizer, probe_texts, max_length=128, accuracy=None, repeats=20, parameters=None) -> dict:
    """Size, latency at batch 1 (cycling over probe texts) and batch 32, throughput."""
    b1 = [tokenizer.batch_encode([t], max_length=max_length) for t in probe_texts[:repeats]]
    b32 = tokenizer.batch_encode(probe_texts[:32], max_length=max_length)
    singles = []
    with torch.inference_mode():
        model.eval()
        model(**b1[0])
        for batch in b1:
            start = time.perf_counter()
            model(**batch)
            singles.append((time.perf_counter() - start) * 1000)
    singles.sort()
    p50_32, p95_32 = latency_ms(model, b32, max(3, repeats // 4))
    return {"parameters": parameters if parameters is not None else weight_count(model),
            "disk_mb": disk_bytes(model) / 1e6, "b1_p50_ms": statistics.median(singles),
            "b1_p95_ms": singles[min(len(singles) - 1, round(0.95 * (len(singles) - 1)))],
            "b32_p50_ms": p50_32, "b32_p95_ms": p95_32, "throughput": 32_000 / p50_32, "accuracy": accuracy}


@torch.inference_mode()
def interleaved_latency(models: dict, tokenizer, probe_texts, max_length=128, rounds=30, rounds_b32=8) -> dict:
    """Latency of several models measured in turns (one call each per round), so that load from
    other processes on a shared machine falls on all of them alike.

    -> {name: {"b1_p50_ms", "b1_p95_ms", "b32_p50_ms", "b32_p95_ms", "throughput"}}."""
    singles = [tokenizer.batch_encode([t], max_length=max_length) for t in probe_texts[:rounds]]
    b32 = tokenizer.batch_encode(probe_texts[:32], max_length=max_length)
    times = {name: {"b1": [], "b32": []} for name in models}
    for model in models.values():
        model.eval()
        model(**singles[0])
        model(**b32)
    for r in range(rounds):
        for name, model in models.items():
            for key, batch in (("b1", singles[r % len(singles)]), ("b32", b32 if r < rounds_b32 else None)):
                if batch is None:
                    continue
                start = time.perf_counter()
                model(**batch)
                times[name][key].append((time.perf_counter() - start) * 1000)
    return {name: {"b1_p50_ms": _percentile(t["b1"], 50), "b1_p95_ms": _percentile(t["b1"], 95),
                   "b32_p50_ms": _percentile(t["b32"], 50), "b32_p95_ms": _percentile(t["b32"], 95),
                   "throughput": 32_000 / _percentile(t["b32"], 50)}
            for name, t in times.items()}


def _percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def markdown_table(rows: dict, baseline: str) -> str:
    """rows: {name: measure()}; ratios and deltas are against `baseline`."""
    base = rows[baseline]
    head = ["model"] + [title for _, title, _ in COLUMNS] + ["b1 speed-up", "b32 speed-up", "accuracy change"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in rows.items():
        cells = [name] + ["-" if row.get(key) is None else fmt.format(row[key]) for key, _, fmt in COLUMNS]
        cells.append(f"{base['b1_p50_ms'] / row['b1_p50_ms']:.2f}x")
        cells.append(f"{base['b32_p50_ms'] / row['b32_p50_ms']:.2f}x")
        both = row.get("accuracy") is not None and base.get("accuracy") is not None
        cells.append(f"{100 * (row['accuracy'] - base['accuracy']):+.2f} pt" if both else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_report(rows: dict, png_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    panels = [("b1_p50_ms", "batch 1 p50 latency (ms)"), ("b32_p50_ms", "batch 32 p50 latency (ms)"),
              ("parameters", "parameters (M)"), ("accuracy", "accuracy")]
    for ax, (key, title) in zip(axes, panels):
        values = [(rows[n].get(key) or 0) / (1e6 if key == "parameters" else 1) for n in names]
        ax.bar(range(len(names)), values, color="tab:blue")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        if key == "accuracy" and any(values):
            low = min(v for v in values if v)
            ax.set_ylim(max(0.0, low - 0.05), 1.0)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def write_report(rows: dict, baseline: str, out_dir, title="Compression report", notes=()):
    """report.md (table + notes), report.png and report.json in out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_report(rows, out_dir / "report.png")
    text = [f"# {title}", "", markdown_table(rows, baseline), "", *[f"- {n}" for n in notes], "",
            "![chart](report.png)", ""]
    (out_dir / "report.md").write_text("\n".join(text))
    (out_dir / "report.json").write_text(json.dumps(rows, indent=2))
    return out_dir / "report.md"

