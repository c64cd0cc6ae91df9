"""Training-epoch time of attnlab's graph networks against PyTorch Geometric's, the same model
with the same weights, in one process on one thread, interleaved.

An epoch is one full-batch training step on Cora (dropout, forward, backward, Adam step), as the
accuracy benchmark trains. The PyG models are the papers' (and PyG's examples') architectures:

    gcn  dropout 0.5 -> GCNConv(1433, 16) -> ReLU -> dropout 0.5 -> GCNConv(16, 7)
    gat  dropout 0.6 -> GATConv(1433, 8, heads=8, dropout=0.6) -> ELU -> dropout 0.6 -> GATConv(64, 7, heads=1)
    transformer  (attnlab's graph-transformer-cora has no PyG counterpart as a whole; its edge
         attention is compared as one layer: EdgeAttention vs TransformerConv(1433, 16, heads=4))

    OMP_NUM_THREADS=1 flock /tmp/attnlab-bench.lock python benchmarks/graph_speed.py --rounds 30
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch_geometric.nn import GATConv, GCNConv, TransformerConv

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import alternating_times, machine  # noqa: E402

from attnlab.data.graph import read_graph  # noqa: E402
from attnlab.layers.graph import EdgeAttention  # noqa: E402
from attnlab.models.base import build_model, preset  # noqa: E402
from attnlab.processors.graph import GraphProcessor  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "planetoid" / "cora.npz"


class PygGCN(torch.nn.Module):
    def __init__(self, features, classes):
        super().__init__()
        self.conv1, self.conv2 = GCNConv(features, 16), GCNConv(16, classes)

    def forward(self, x, edge_index):
        h = F.relu(self.conv1(F.dropout(x, 0.5, self.training), edge_index))
        return self.conv2(F.dropout(h, 0.5, self.training), edge_index)


class PygGAT(torch.nn.Module):
    def __init__(self, features, classes):
        super().__init__()
        self.conv1 = GATConv(features, 8, heads=8, dropout=0.6)
        self.conv2 = GATConv(64, classes, heads=1, concat=False, dropout=0.6)

    def forward(self, x, edge_index):
        h = F.elu(self.conv1(F.dropout(x, 0.6, self.training), edge_index))
        return self.conv2(F.dropout(h, 0.6, self.training), edge_index)


def copy_gcn(ours, theirs):
    for block, conv in zip(ours.blocks, (theirs.conv1, theirs.conv2)):
        conv.lin.weight.copy_(block.conv.lin.weight)
        conv.bias.copy_(block.conv.bias)


def copy_gat(ours, theirs):
    for block, conv in zip(ours.blocks, (theirs.conv1, theirs.conv2)):
        conv.lin.weight.copy_(block.conv.lin.weight)
        conv.att_src.copy_(block.conv.att_src.view_as(conv.att_src))
        conv.att_dst.copy_(block.conv.att_dst.view_as(conv.att_dst))
        conv.bias.copy_(block.conv.bias)


class LayerModel(torch.nn.Module):
    """One attention layer as a model: layer(x, edges) -> logits through a fixed linear read-out."""

    def __init__(self, layer, width, classes):
        super().__init__()
        self.layer, self.out = layer, torch.nn.Linear(width, classes)

    def forward(self, x, edge_index, labels=None):
        logits = self.out(F.relu(self.layer(x, edge_index)))
        return logits


def copy_transformer(ours, theirs):
    pairs = [(ours.layer.q_proj, theirs.layer.lin_query), (ours.layer.k_proj, theirs.layer.lin_key),
             (ours.layer.v_proj, theirs.layer.lin_value), (ours.layer.skip_proj, theirs.layer.lin_skip),
             (ours.out, theirs.out)]
    for mine, pyg in pairs:
        pyg.weight.copy_(mine.weight)
        pyg.bias.copy_(mine.bias)


def epoch_step(model, optimizer, x, edges, labels, mask, ours):
    def step():
        model.train()
        optimizer.zero_grad()
        logits = model(x, edges) if not ours else model(x=x, edge_index=edges).logits
        F.cross_entropy(logits[mask], labels[mask]).backward()
        optimizer.step()
    return step


def pairs(graph, batch):
    features, classes = graph.x.size(1), graph.num_classes
    gcn = build_model(preset("gcn-cora", in_features=features, num_classes=classes))
    gat = build_model(preset("gat-cora", in_features=features, num_classes=classes))
    pyg_gcn, pyg_gat = PygGCN(features, classes), PygGAT(features, classes)
    ours_t = LayerModel(EdgeAttention(features, 16, n_head=4, skip=True), 64, classes)
    pyg_t = LayerModel(TransformerConv(features, 16, heads=4), 64, classes)
    with torch.no_grad():
        copy_gcn(gcn, pyg_gcn)
        copy_gat(gat, pyg_gat)
        copy_transformer(ours_t, pyg_t)
    return {"gcn": (gcn, pyg_gcn, True), "gat": (gat, pyg_gat, True), "edge attention layer": (ours_t, pyg_t, False)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", default="benchmarks/results/graph_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    graph = read_graph(DATA)
    batch = GraphProcessor(graph.x.size(1)).to_batch(graph.x, graph.edge_index)
    x, edges, mask = batch["x"], batch["edge_index"], graph.masks["train"]
    report = {"machine": machine(), "rounds": args.rounds, "models": {}}
    for name, (mine, theirs, whole_model) in pairs(graph, batch).items():
        steps = [epoch_step(model, torch.optim.Adam(model.parameters(), lr=0.005), x, edges, graph.y, mask,
                            ours=whole_model and model is mine) for model in (mine, theirs)]
        ours_times, pyg_times = alternating_times(steps, args.rounds)
        ratios = [p / o for o, p in zip(ours_times, pyg_times)]
        report["models"][name] = {"attnlab_ms": 1000 * statistics.median(ours_times),
                                  "pyg_ms": 1000 * statistics.median(pyg_times),
                                  "speedup_median": statistics.median(ratios), "speedup_min": min(ratios),
                                  "speedup_max": max(ratios)}
        print(f"{name}: attnlab {report['models'][name]['attnlab_ms']:.1f} ms, PyG "
              f"{report['models'][name]['pyg_ms']:.1f} ms per epoch; PyG / attnlab = "
              f"{report['models'][name]['speedup_median']:.2f}x (min {min(ratios):.2f}, max {max(ratios):.2f})")
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
