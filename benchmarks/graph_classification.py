"""Graph classification where the structure decides the label: attnlab's graph classifiers against
count baselines on synthetic graph families, built offline with networkx.

Six families, each graph 10-30 nodes (the same range for every family), its nodes shuffled, every
node the same feature (1.0, so the mean of the features says nothing), and noisy edges (half the
graphs gain a random edge, a quarter lose one):

    cycle (E = N), path (N - 1), random tree (N - 1), two cycles joined by an edge (N + 1),
    lollipop: K4 with a path tail (N + 2), wheel (2N - 2)

1,500 graphs (250 a family), split 60/20/20 at random. Baselines, fitted on the train split: the
majority label per node count, and per (node count, edge count). The models are trained with
`attnlab train` (task graph_classification) and the best checkpoint (lowest val loss) is scored with
`attnlab eval`; the configuration is chosen on validation accuracy, and its test accuracy reported.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/graph_classification.py --out /tmp/graph-families
"""

import argparse
import contextlib
import io
import json
import os
import sys
from collections import Counter
from pathlib import Path

import networkx as nx
import numpy as np
import torch

from attnlab.cli import main as attnlab
from attnlab.data.graph import write_graph_set

FAMILIES = ("cycle", "path", "tree", "two_cycles", "lollipop", "wheel")
CONFIGS = {  # name -> model fields and data fields of the run
    "gcn-mean": ({"layer": "gcn", "d_model": 64, "n_layer": 3, "dropout": 0.0, "readout": "mean"}, {}),
    "transformer-rw-mean": ({"layer": "transformer", "d_model": 64, "n_head": 4, "n_layer": 3, "dropout": 0.0,
                             "readout": "mean"}, {"pos_encoding": "random_walk", "pos_dim": 8}),
    "transformer-rw-sum": ({"layer": "transformer", "d_model": 64, "n_head": 4, "n_layer": 3, "dropout": 0.0,
                            "readout": "sum"}, {"pos_encoding": "random_walk", "pos_dim": 8}),
}


def family_graph(family: str, n: int, rng: np.random.Generator) -> nx.Graph:
    if family == "cycle":
        return nx.cycle_graph(n)
    if family == "path":
        return nx.path_graph(n)
    if family == "tree":
        return nx.random_labeled_tree(n, seed=int(rng.integers(2 ** 31)))
    if family == "two_cycles":
        a = int(rng.integers(3, n - 2))
        graph = nx.disjoint_union(nx.cycle_graph(a), nx.cycle_graph(n - a))
        graph.add_edge(int(rng.integers(a)), a + int(rng.integers(n - a)))
        return graph
    if family == "lollipop":
        return nx.lollipop_graph(4, n - 4)
    return nx.wheel_graph(n)


def noisy(graph: nx.Graph, rng: np.random.Generator) -> nx.Graph:
    """Half the graphs gain a random edge, a quarter lose one."""
    graph = graph.copy()
    if rng.random() < 0.5:
        missing = list(nx.non_edges(graph))
        graph.add_edge(*missing[rng.integers(len(missing))])
    if rng.random() < 0.25:
        edges = list(graph.edges)
        graph.remove_edge(*edges[rng.integers(len(edges))])
    return graph


def make_graph_families(path: Path, per_family: int = 250, seed: int = 0) -> dict:
    """Writes the data set to `path` (an .npz of many graphs); -> its counts per graph and the splits."""
    rng = np.random.default_rng(seed)
    graphs, labels, counts = [], [], []
    for label, family in enumerate(FAMILIES):
        for _ in range(per_family):
            graph = noisy(family_graph(family, int(rng.integers(10, 31)), rng), rng)
            order = rng.permutation(graph.number_of_nodes())  # node numbers say nothing
            edges = np.array([(order[a], order[b]) for a, b in graph.edges], dtype=np.int64).T.reshape(2, -1)
            graphs.append((np.ones((graph.number_of_nodes(), 1), np.float32), np.concatenate([edges, edges[::-1]], 1)))
            labels.append(label)
            counts.append((graph.number_of_nodes(), graph.number_of_edges()))
    split = rng.permutation(len(graphs)) % 5  # 0-2 train, 3 val, 4 test
    masks = {"train": split < 3, "val": split == 3, "test": split == 4}
    write_graph_set(path, graphs, labels, masks)
    return {"labels": labels, "counts": counts, "masks": masks}


def count_baselines(data: dict) -> dict:
    """Test accuracy of the train split's majority label per node count, and per (nodes, edges)."""
    train, test = np.flatnonzero(data["masks"]["train"]), np.flatnonzero(data["masks"]["test"])
    labels, counts = data["labels"], data["counts"]
    overall = Counter(labels[i] for i in train).most_common(1)[0][0]

    def accuracy(key) -> float:
        votes = {}
        for i in train:
            votes.setdefault(key(counts[i]), Counter())[labels[i]] += 1
        guess = {k: c.most_common(1)[0][0] for k, c in votes.items()}
        return float(np.mean([guess.get(key(counts[i]), overall) == labels[i] for i in test]))

    return {"majority": float(np.mean([labels[i] == overall for i in test])),
            "node_count": accuracy(lambda c: c[0]), "node_and_edge_count": accuracy(lambda c: c)}


def train_and_score(name: str, data_path: Path, out: Path, steps: int, seed: int) -> dict:
    model, data = CONFIGS[name]
    run = out / f"{name}-seed{seed}"
    overrides = ["task=graph_classification", "model.family=graph_classifier", "data.normalize=none",
                 *(f"model.{k}={v}" for k, v in model.items()), *(f"data.{k}={v}" for k, v in data.items()),
                 f"train.max_steps={steps}", "train.batch_size=32", "train.eval_interval=100",
                 "train.patience=0", "train.progress=false", "train.device=cpu", f"train.seed={seed}"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert attnlab(["train", "--data", str(data_path), "--out", str(run), *overrides]) == 0
    scores = io.StringIO()
    with contextlib.redirect_stdout(scores):
        assert attnlab(["eval", str(run / "best"), "--data", str(data_path)]) == 0
    scores = json.loads(scores.getvalue())
    return {"config": name, "seed": seed, "val": scores["val_accuracy"], "test": scores["test_accuracy"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for the data set and the runs")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--configs", nargs="*", default=sorted(CONFIGS), choices=sorted(CONFIGS))
    parser.add_argument("--results", default="benchmarks/results/graph_classification.jsonl", help="appends lines")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = make_graph_families(out / "graph_families.npz")
    rows = [{"baselines": count_baselines(data)}]
    print(json.dumps(rows[0]), file=sys.stderr)
    for name in args.configs:
        for seed in range(args.seeds):
            rows.append(train_and_score(name, out / "graph_families.npz", out, args.steps, seed))
            print(json.dumps(rows[-1]), file=sys.stderr)
    with open(args.results, "a") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    for name in args.configs:
        mine = [r for r in rows[1:] if r["config"] == name]
        val, test = (100 * np.mean([r[k] for r in mine]) for k in ("val", "test"))
        print(f"{name}: val {val:.2f} %, test {test:.2f} % (mean of {len(mine)} seeds)")


if __name__ == "__main__":
    if os.environ.get("OMP_NUM_THREADS") != "1":
        print("run with OMP_NUM_THREADS=1 (one thread, a shared machine)", file=sys.stderr)
    main()
