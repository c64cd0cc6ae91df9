"""Graph classification: the .npz of many graphs, batches of whole graphs (and their data-parallel
split), the graph_classification task through train, eval and classify, and the server's
/v1/classify for a posted list of graphs. Pooling parity with PyG is in tests/layers/test_graph_layers.py."""

import json

import networkx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from attnlab.cli import main
from attnlab.data.graph import (FullGraphBatches, Graph, GraphSetBatches, collate_graphs, read_graph, read_graph_set,
                                write_graph_set)
from attnlab.errors import UserError
from attnlab.models.base import build_model, preset
from attnlab.processors.graph import GraphProcessor
from attnlab.serving.app import ServeConfig, create_app
from attnlab.training.distributed import RankBatches


def undirected(graph) -> np.ndarray:
    pairs = np.array(list(graph.edges()), dtype=np.int64).T.reshape(2, -1)
    return np.concatenate([pairs, pairs[::-1]], axis=1)


def cycles_and_stars(path, count: int = 40):
    """Cycles (label 0) and stars (label 1) of 6-13 nodes, each node the feature 1: only the structure
    tells them apart. Half to train, a quarter each to validate and test."""
    graphs, labels = [], []
    for i in range(count):
        n = 6 + i % 8
        graph = networkx.cycle_graph(n) if i % 2 == 0 else networkx.star_graph(n - 1)
        graphs.append((np.ones((n, 1), np.float32), undirected(graph)))
        labels.append(i % 2)
    part = np.arange(count) // 2 % 4  # both labels in every split
    write_graph_set(path, graphs, labels, {"train": part < 2, "val": part == 2, "test": part == 3})
    return path


def test_a_graph_set_round_trips_and_a_batch_splits_into_whole_graphs(tmp_path):
    path = cycles_and_stars(tmp_path / "graphs.npz", count=6)
    graph_set = read_graph_set(path)
    assert [len(x) for x, _ in graph_set.graphs] == [6, 7, 8, 9, 10, 11] and graph_set.num_classes == 2
    cycle = graph_set.graphs[2][1]
    assert cycle.min() == 0 and cycle.max() == 7 and cycle.size(1) == 16  # its own nodes, both directions
    items = [GraphProcessor(1, pos_encoding="random_walk", pos_dim=3).to_batch(x, e) for x, e in graph_set.graphs]
    whole = collate_graphs(items, graph_set.y)
    assert whole.inputs["x"].shape == (51, 1) and whole.inputs["batch"].bincount().tolist() == [6, 7, 8, 9, 10, 11]
    part = whole.rows(2, 4)  # a data-parallel rank's share: graphs 2 and 3, renumbered
    expected = collate_graphs(items[2:4], graph_set.y[2:4])
    for name, value in expected.inputs.items():
        torch.testing.assert_close(part.inputs[name], value, rtol=0, atol=0)
    torch.manual_seed(0)
    model = build_model(preset("graph-classifier-tiny", layer="transformer", in_features=1, num_classes=2, pos_dim=3,
                               global_attention=True)).eval()
    with torch.no_grad():  # graphs do not mix: the two alone get the logits they get among all six
        torch.testing.assert_close(model(**part.inputs).logits, model(**whole.inputs).logits[2:4], rtol=0, atol=1e-5)


def test_data_parallel_ranks_get_whole_graphs_and_one_whole_graph_is_refused(tmp_path):
    graph_set = read_graph_set(cycles_and_stars(tmp_path / "graphs.npz"))
    items = [GraphProcessor(1).to_batch(x, e) for x, e in graph_set.graphs]
    shares = [RankBatches(GraphSetBatches(items, graph_set, 3), rank, 2).sample("train", torch.Generator().manual_seed(1))
              for rank in range(2)]
    full = GraphSetBatches(items, graph_set, 6).sample("train", torch.Generator().manual_seed(1))
    assert [s.inputs["labels"].tolist() for s in shares] == [full.inputs["labels"][:3].tolist(),
                                                             full.inputs["labels"][3:].tolist()]
    assert sum(s.tokens for s in shares) == full.tokens  # every node of the global batch, once
    one = FullGraphBatches({"x": torch.ones(2, 1), "edge_index": torch.zeros(2, 0, dtype=torch.long)}, _two_nodes())
    with pytest.raises(UserError, match="cannot be split across data-parallel ranks"):
        RankBatches(one, 0, 2)


def _two_nodes() -> Graph:
    masks = {"train": torch.tensor([True, False]), "val": torch.tensor([False, True]), "test": torch.tensor([True, True])}
    return Graph(torch.ones(2, 1), torch.tensor([0, 1]), torch.zeros(2, 0, dtype=torch.long), masks)


def bad_set(path, **change):
    arrays = {"x": np.ones((5, 1), np.float32), "edge_index": np.array([[0, 1], [1, 0]]), "graph_ptr": np.array([0, 2, 5]),
              "y": np.array([0, 1]), "train_mask": np.array([True, False]), "val_mask": np.array([False, True]),
              "test_mask": np.array([True, True])}
    np.savez(path, **{**arrays, **change})
    return path


@pytest.mark.parametrize("change, message", [
    ({"edge_index": np.array([[1], [2]])}, "an edge joins two graphs"),
    ({"graph_ptr": np.array([0, 2, 4])}, "graph_ptr must rise from 0 to the node count 5"),
    ({"graph_ptr": np.array([0, 0, 5])}, "each graph at least one node"),
    ({"y": np.array([0, 1, 1])}, "y and the masks (G,)"),
    ({"edge_index": np.array([[0], [7]])}, "names nodes outside 0..4"),
])
def test_a_bad_graph_set_file_is_one_line(tmp_path, change, message):
    with pytest.raises(UserError) as err:
        read_graph_set(bad_set(tmp_path / "bad.npz", **change))
    assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="lacks the array.*graph_ptr"):
        read_graph_set(_one_graph(tmp_path))
    with pytest.raises(UserError, match="holds many graphs"):
        read_graph(bad_set(tmp_path / "good.npz"))


def _one_graph(tmp_path):
    path = tmp_path / "single.npz"
    np.savez(path, x=np.ones((2, 1), np.float32), y=np.array([0, 1]), edge_index=np.zeros((2, 0), np.int64),
             train_mask=np.array([True, False]), val_mask=np.array([False, True]), test_mask=np.array([True, True]))
    return path


def test_train_eval_and_classify_tell_cycles_from_stars(tmp_path, capsys):
    data = cycles_and_stars(tmp_path / "graphs.npz")
    run = tmp_path / "run"
    assert main(["train", "task=graph_classification", "--data", str(data), "--out", str(run), "model.layer=transformer",
                 "model.d_model=16", "model.n_head=2", "model.dropout=0.0", "data.normalize=none",
                 "data.pos_encoding=random_walk", "data.pos_dim=4", "train.max_steps=60", "train.eval_interval=20",
                 "train.batch_size=8", "train.lr=0.01", "train.warmup_steps=0", "train.progress=false",
                 "train.device=cpu"]) == 0
    assert "val_accuracy" in capsys.readouterr().err
    assert main(["eval", str(run), "--data", str(data)]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["test_graphs"] == 10 and scores["test_accuracy"] >= 0.9, scores  # one label: 0.5
    assert main(["classify", str(run), "--input", str(data)]) == 0
    out = capsys.readouterr()
    rows = [json.loads(line) for line in out.out.splitlines()]
    assert [r["graph"] for r in rows] == list(range(40)) and "test accuracy" in out.err
    for argv in (["classify", str(run)], ["eval", str(run), "--data", str(_one_graph(tmp_path))],
                 ["train", "task=graph_classification", "--data", str(data), "--out", str(tmp_path / "r2"),
                  "model.preset=gcn-cora"]):
        assert main(argv) == 2, argv
        message = capsys.readouterr().err.strip()
        assert message and "\n" not in message and "Traceback" not in message, (argv, message)


def test_the_server_labels_each_posted_graph_and_refuses_bad_requests():
    torch.manual_seed(0)
    model = build_model(preset("graph-classifier-tiny", max_nodes=8)).eval()
    app = create_app(model, GraphProcessor(10),
                     ServeConfig(max_nodes=20, max_edges=40, max_inputs=3))

    def graph(nodes, edges=((0, 1), (1, 0))):
        return {"x": torch.rand(nodes, 10).tolist(), "edge_index": [[a for a, _ in edges], [b for _, b in edges]]}

    with TestClient(app) as client:
        reply = client.post("/v1/classify", json={"graphs": [graph(3), graph(5), graph(2, ())]})
        assert reply.status_code == 200, reply.text
        data = reply.json()["data"]
        assert [row["index"] for row in data] == [0, 1, 2]
        assert all(abs(sum(row["scores"].values()) - 1) < 1e-5 and row["label"] in row["scores"] for row in data)
        for body, status, message in [
            ({"graphs": [graph(2)] * 4}, 413, "4 graphs, more than the limit of 3"),
            ({"graphs": [graph(8), graph(8), graph(8)]}, 413, "24 nodes and 6 edges together"),
            ({"graphs": [graph(2), graph(9)]}, 413, "graph 1 has 9 nodes, more than the limit of 8"),
            ({"graphs": [graph(2), graph(3, ((0, 5),))]}, 400, "graph 1: edge_index names node 5"),
            ({"graphs": []}, 422, "graphs"),
            ({"x": [[1.0] * 10], "edge_index": [[], []]}, 422, "unknown field"),
        ]:
            reply = client.post("/v1/classify", json=body)
            error = reply.json()["error"]["message"]
            assert reply.status_code == status and message in error and "\n" not in error, (status, error)
