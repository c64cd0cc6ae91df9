"""Node-classification accuracy of attnlab's graph family on the Planetoid citation graphs (public
split), over seeds, with the papers' protocols:

    gcn          Kipf & Welling 2017: 2 layers, 16 hidden, dropout 0.5, Adam lr 0.01, L2 5e-4 on the
                 first layer, 200 epochs; the test accuracy at the epoch of best validation accuracy
    gat          Velickovic et al. 2018: 8 heads x 8 hidden, 1 output head, dropout 0.6 on inputs and
                 attention, and as the paper's code also on the projected features (value_dropout)
                 with each head's input mask drawn on its own (dropout_per_head), Adam lr 0.005, L2
                 5e-4, patience 100: training stops when neither the val loss nor the val accuracy
                 improved for 100 epochs; the model kept is the last that improved both
    transformer  the graph transformer (edge attention + FFN blocks, preset graph-transformer-cora),
                 trained as gat

The model and the data path are the library's (preset, GraphProcessor, read_graph); the loop is a
plain full-batch one so that the optimiser is the papers' Adam with L2 (the trainer's is AdamW).

    OMP_NUM_THREADS=1 flock /tmp/attnlab-bench.lock python benchmarks/graph_accuracy.py --model gcn --data cora
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from attnlab.data.graph import read_graph
from attnlab.models.base import build_model, preset
from attnlab.processors.graph import GraphProcessor

DATA = Path(os.environ.get("ATTNLAB_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "planetoid"
PROTOCOLS = {  # model -> (preset, lr, weight decay on the first block only, max epochs, patience, preset overrides)
    "gcn": ("gcn-cora", 0.01, True, 200, None, {}),
    "gat": ("gat-cora", 0.005, False, 100_000, 100,  # the paper's code: at most 100,000 epochs, and its dropouts
            {"value_dropout": 0.6, "dropout_per_head": True}),
    "transformer": ("graph-transformer-cora", 0.005, False, 100_000, 100, {}),
}


def run(model_name: str, data_name: str, seed: int, overrides: dict) -> dict:
    name, lr, first_only, epochs, patience, protocol_overrides = PROTOCOLS[model_name]
    overrides = {**protocol_overrides, **overrides}
    graph = read_graph(DATA / f"{data_name}.npz")
    batch = GraphProcessor(graph.x.size(1)).to_batch(graph.x, graph.edge_index)
    torch.manual_seed(seed)
    model = build_model(preset(name, in_features=graph.x.size(1), num_classes=graph.num_classes, **overrides))
    decayed = model.blocks[0].parameters() if first_only else model.parameters()
    ids = {id(p) for p in decayed}
    rest = [p for p in model.parameters() if id(p) not in ids]
    optimizer = torch.optim.Adam([{"params": [p for p in model.parameters() if id(p) in ids], "weight_decay": 5e-4},
                                  {"params": rest, "weight_decay": 0.0}], lr=lr)
    train_labels = graph.labels("train")
    best = {"val_acc": -1.0, "val_loss": float("inf")}
    kept, waited, start = None, 0, time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        optimizer.zero_grad()
        model(**batch, labels=train_labels).loss.backward()
        optimizer.step()
        val_loss, accuracy = evaluate(model, batch, graph)
        if patience is None:  # gcn: the epoch of best validation accuracy
            if accuracy["val"] > best["val_acc"]:
                best["val_acc"], kept = accuracy["val"], {"epoch": epoch, **accuracy}
            continue
        improved_acc, improved_loss = accuracy["val"] >= best["val_acc"], val_loss <= best["val_loss"]
        if improved_acc and improved_loss:
            kept = {"epoch": epoch, **accuracy}
        if improved_acc or improved_loss:
            best["val_acc"], best["val_loss"] = max(best["val_acc"], accuracy["val"]), min(best["val_loss"], val_loss)
            waited = 0
        else:
            waited += 1
            if waited >= patience:
                break
    return {"model": model_name, **overrides, "data": data_name, "seed": seed, "epochs_run": epoch,
            "seconds": round(time.perf_counter() - start, 1), **kept}


@torch.no_grad()
def evaluate(model, batch, graph):
    model.eval()
    logits = model(**batch).logits
    predicted = logits.argmax(-1)
    val = graph.masks["val"]
    accuracy = {split: float((predicted[graph.masks[split]] == graph.y[graph.masks[split]]).float().mean())
                for split in ("val", "test")}
    return float(F.cross_entropy(logits[val], graph.y[val])), accuracy


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(PROTOCOLS), required=True)
    parser.add_argument("--data", choices=("cora", "citeseer"), required=True)
    parser.add_argument("--seeds", default="0-9", help="first-last, inclusive")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="preset overrides (JSON values), e.g. value_dropout=0 dropout_per_head=false")
    parser.add_argument("--out", default="benchmarks/results/graph_accuracy.jsonl", help="appends one line per seed")
    args = parser.parse_args()
    torch.set_num_threads(1)
    first, last = map(int, args.seeds.split("-"))
    overrides = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.set)}
    results = []
    for seed in range(first, last + 1):
        results.append(run(args.model, args.data, seed, overrides))
        print(json.dumps(results[-1]), file=sys.stderr)
        with open(args.out, "a") as handle:
            handle.write(json.dumps(results[-1]) + "\n")
    tests = [100 * r["test"] for r in results]
    spread = statistics.stdev(tests) if len(tests) > 1 else 0.0
    val = statistics.mean(100 * r["val"] for r in results)
    settings = {**PROTOCOLS[args.model][-1], **overrides}
    print(f"{args.model} {settings or ''} on {args.data}, {len(tests)} seeds: test accuracy {statistics.mean(tests):.2f} "
          f"+- {spread:.2f} % (min {min(tests):.1f}, max {max(tests):.1f}); mean val accuracy {val:.2f} %")


if __name__ == "__main__":
    main()
