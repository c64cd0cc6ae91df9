"""Issue 21, part 2: does the attention viewer stay usable on long inputs? A 512-token, 12-layer, 12-head
encoder's page must stay under 20 MB and paint in under 5 s.

Two models, 512 tokens of Shakespeare each:
  random   a BERT-base-sized encoder (12 layers, 12 heads, d 768) at its random initialisation: nearly
           uniform attention, every key of every row a little (the worst case for the page's compression);
  minilm   all-MiniLM-L6-v2's real weights with its 6 layers run twice (12 layers, 12 heads): the peaked
           patterns of a trained model.
For each: the page's size, the Python side (capture + page) in seconds, and in headless Chromium (DevTools
over a pipe, tests/chromium.py) the time from navigation start to the first paint of both views (the page's
own performance.now() when it has drawn), with one head selected (the default) and with all twelve, and the
time one click on a model-view map takes to redraw the head view (its lines are rasterised at the next paint). Medians over --rounds page loads, the two models alternating.

    OMP_NUM_THREADS=1 flock /tmp/attnlab-bench.lock env PYTHONPATH=src:. ATTNLAB_DATA=../shared/data \\
        python benchmarks/attention_viewer.py --rounds 5
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.chromium, run from anywhere

from attnlab.inference.attention_view import render_html, view_attention  # noqa: E402
from attnlab.interop import import_hf, minilm_path  # noqa: E402
from attnlab.models import build_model  # noqa: E402
from benchmarks.common import machine  # noqa: E402
from tests.chromium import Chromium, find_chromium  # noqa: E402

CLICK = ("(() => { const t = performance.now(); "
         "document.querySelector('#grid canvas[data-layer=\"7\"][data-head=\"5\"]').click(); "
         "return performance.now() - t; })()")


def shakespeare(tokenizer, tokens: int) -> str:
    """The longest start of the Shakespeare corpus that is at most `tokens` tokens with [CLS] and [SEP]."""
    data = Path(os.environ.get("ATTNLAB_DATA", "../shared/data")) / "tinyshakespeare.txt"
    words = data.read_text(encoding="utf-8").split()[:tokens]
    low, high = 1, len(words)
    while low < high:  # the most words whose tokens fit
        middle = (low + high + 1) // 2
        fits = tokenizer.batch_encode([" ".join(words[:middle])])["input_ids"].size(1) <= tokens
        low, high = (middle, high) if fits else (low, middle - 1)
    return " ".join(words[:low])


def models() -> dict:
    minilm, tokenizer = import_hf(minilm_path())
    six = minilm.config.n_layer
    twelve = build_model(minilm.config.replace(n_layer=2 * six))
    state = minilm.state_dict()
    twelve.load_state_dict({key: state[_from_layer(key, six)] for key in twelve.state_dict()})
    torch.manual_seed(0)
    random = build_model(minilm.config.replace(n_layer=12, d_model=768, ffn_hidden=3072))
    return {"random": (random.eval(), tokenizer), "minilm": (twelve.eval(), tokenizer)}


def _from_layer(key: str, layers: int) -> str:
    """blocks.{i}.x of the doubled model reads blocks.{i mod layers}.x of the original."""
    parts = key.split(".")
    if parts[0] == "blocks":
        parts[1] = str(int(parts[1]) % layers)
    return ".".join(parts)


def page(model, tokenizer, text: str) -> tuple:
    """-> (the page, seconds to capture the weights and write it, the view)."""
    start = time.perf_counter()
    view = view_attention(model, tokenizer, text=text, title="benchmark")
    html = render_html(view)
    return html, time.perf_counter() - start, view


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=512, help="input length (the goal is set at 512)")
    parser.add_argument("--out", default="benchmarks/results/attention_viewer.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    built = {}
    for name, (model, tokenizer) in models().items():
        html, seconds, view = page(model, tokenizer, shakespeare(tokenizer, args.tokens))
        weights = view.stacks()["encoder"]
        print(f"{name}: {tuple(weights.shape)} weights, page {len(html) / 2 ** 20:.2f} MB, built in {seconds:.1f} s",
              file=sys.stderr)
        built[name] = {"html": html, "shape": list(weights.shape), "build_s": seconds}
    browser = Chromium(find_chromium(), width=1400, height=1000)
    results = {name: {"paint_ms": [], "paint_all_heads_ms": [], "click_ms": []} for name in built}
    with tempfile.TemporaryDirectory() as tmp:
        for name, entry in built.items():
            (Path(tmp) / f"{name}.html").write_text(entry["html"], encoding="utf-8")
        for _ in range(args.rounds):
            for name in built:
                url = (Path(tmp) / f"{name}.html").as_uri()
                results[name]["paint_ms"].append(float(browser.open(url, timeout=120)))
                results[name]["click_ms"].append(browser.evaluate(CLICK))
                every_head = ",".join(map(str, range(built[name]["shape"][1])))
                results[name]["paint_all_heads_ms"].append(float(browser.open(f"{url}#heads={every_head}", timeout=120)))
    browser.close()
    summary = {}
    for name, entry in built.items():
        summary[name] = {"weights": entry["shape"], "page_mb": round(len(entry["html"].encode()) / 2 ** 20, 2),
                         "build_s": round(entry["build_s"], 2),
                         "paint_s_median": round(statistics.median(results[name]["paint_ms"]) / 1000, 2),
                         "paint_s_max": round(max(results[name]["paint_ms"]) / 1000, 2),
                         "paint_all_heads_s_median": round(statistics.median(results[name]["paint_all_heads_ms"]) / 1000, 2),
                         "paint_all_heads_s_max": round(max(results[name]["paint_all_heads_ms"]) / 1000, 2),
                         "click_ms_median": round(statistics.median(results[name]["click_ms"]), 1),
                         "under_20_mb": len(entry["html"].encode()) < 20 * 2 ** 20,
                         "paints_under_5_s": max(results[name]["paint_ms"] + results[name]["paint_all_heads_ms"]) < 5000}
    report = {"machine": machine(), "rounds": args.rounds, "tokens": args.tokens, "results": summary}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
