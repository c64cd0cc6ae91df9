"""The graph family: its three layer types as whole models, the processor's checks, the graph file,
node classification through the command line (train, eval, classify) and the server's graph
endpoint. Layer parity with PyTorch Geometric is in tests/layers/test_graph_layers.py."""

import copy
import json

import networkx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from attnlab.cli import main
from attnlab.compression import inject_lora, quantize_model
from attnlab.compression.lora import lora_modules
from attnlab.compression.targets import find_linears
from attnlab.data.batch import Batch
from attnlab.data.graph import read_graph
from attnlab.errors import UserError
from attnlab.models.base import build_model, family_spec, preset
from attnlab.processors.graph import GraphProcessor, GraphTooLarge
from attnlab.serving.app import ServeConfig, create_app
from attnlab.training import TrainConfig, Trainer

LAYERS = ["gcn", "gat", "transformer"]


def model_of(layer, name="graph-tiny", **fields):
    torch.manual_seed(0)
    extra = {"pos_dim": 3} if layer == "transformer" else {"pos_dim": 0, "global_attention": False}
    config = preset(name).replace(layer=layer, **{**extra, **fields})
    return build_model(config).eval()


def batch_for(model, **options):
    return family_spec(model).example_batch(model.config, torch.Generator().manual_seed(0), **options)


@pytest.mark.parametrize("layer", LAYERS)
def test_relabelling_the_nodes_of_the_whole_model_permutes_its_predictions(layer):
    model = model_of(layer)
    batch = batch_for(model, nodes=20, edges=50)
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(1))
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(20)
    moved = {**batch, "x": batch["x"][perm], "edge_index": inverse[batch["edge_index"]],
             "labels": batch["labels"][perm]}
    if "pos" in batch:
        moved["pos"] = batch["pos"][perm]
    with torch.no_grad():
        out, out_moved = model(**batch), model(**moved)
    torch.testing.assert_close(out_moved.logits, out.logits[perm], rtol=0, atol=1e-5)
    torch.testing.assert_close(out_moved.loss, out.loss)


@pytest.mark.parametrize("layer", LAYERS)
def test_a_graph_without_edges_and_isolated_nodes_give_finite_predictions(layer):
    model = model_of(layer)
    batch = batch_for(model)  # its last two nodes are isolated
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()
        edgeless = model(**{**batch, "edge_index": torch.zeros(2, 0, dtype=torch.long)})
    assert torch.isfinite(edgeless.logits).all() and torch.isfinite(edgeless.loss)


@pytest.mark.parametrize("readout", ["mean", "sum", "max"])
@pytest.mark.parametrize("layer", LAYERS)
def test_graph_classification_pools_each_graph_and_graphs_do_not_mix(layer, readout):
    model = model_of(layer, "graph-classifier-tiny", readout=readout)
    batch = batch_for(model)
    with torch.no_grad():
        out = model(**batch)
        assert out.logits.shape == (3, 3) and torch.isfinite(out.loss)
        changed = batch["x"].clone()
        changed[batch["batch"] == 2] += 1.0  # only the third graph's features change
        moved = model(**{**batch, "x": changed}).logits
    torch.testing.assert_close(moved[:2], out.logits[:2], rtol=0, atol=1e-6)
    assert not torch.allclose(moved[2], out.logits[2])


@pytest.mark.parametrize("layer", ["gcn", "gat"])
def test_compression_reaches_the_projections_of_gcn_and_gat_layers(layer):
    model = model_of(layer)
    batch = batch_for(model)
    blocks = model.blocks
    assert all(find_linears(block, ("v",)) for block in blocks)
    with torch.no_grad():
        reference = model(**batch).logits
        lora = copy.deepcopy(model)
        inject_lora(lora, rank=2, targets=("v",))
        assert len(lora_modules(lora)) == len(blocks)
        torch.testing.assert_close(lora(**batch).logits, reference)
        quantized = quantize_model(copy.deepcopy(model), "dynamic_int8")
        assert not find_linears(quantized)
        cosine = torch.nn.functional.cosine_similarity(quantized(**batch).logits.flatten(), reference.flatten(), dim=0)
    assert cosine > 0.99


def test_config_refuses_transformer_options_on_other_layers_in_one_line():
    with pytest.raises(UserError, match="belong to layer=transformer"):
        preset("gcn-cora", pos_dim=4)
    with pytest.raises(UserError, match="layer='mlp' is not one of gcn, gat, transformer"):
        preset("gcn-cora", layer="mlp")
    with pytest.raises(UserError, match="value_dropout and dropout_per_head belong to layer=gat"):
        preset("gcn-cora", value_dropout=0.5)
    with pytest.raises(UserError, match="value_dropout and dropout_per_head belong to layer=gat"):
        preset("gcn-cora", dropout_per_head=True)
    with pytest.raises(UserError, match="readout='mean' is not one of node"):
        preset("gcn-cora", readout="mean")
    with pytest.raises(UserError, match="readout='node' is not one of mean, sum, max"):
        preset("graph-classifier-tiny", readout="node")


# -- the processor: one line for each kind of bad graph ------------------------------------------

BAD_GRAPHS = [
    ({"x": [[1.0, 2.0]], "edge_index": [[0], [0]]}, "nodes have 2 features, but the model takes 3"),
    ({"x": [[1.0, 2.0, 3.0]] * 2, "edge_index": [[0], [2]]}, "names node 2, but the nodes are numbered 0..1"),
    ({"x": [[1.0, 2.0, 3.0]] * 2, "edge_index": [[0], [-1]]}, "names node -1"),
    ({"x": [[1.0, 2.0, 3.0]] * 2, "edge_index": [[0.5], [1]]}, "must hold integer node indices"),
    ({"x": [[1.0, 2.0, 3.0]] * 2, "edge_index": [[0, 1], [1]]}, "edge_index must be a rectangular list"),
    ({"x": [[1.0, 2.0, 3.0]] * 2, "edge_index": [[0], [1], [1]]}, "must be two rows"),
    ({"x": [[1.0, 2.0, 3.0], [1.0]], "edge_index": [[0], [1]]}, "x must be a rectangular list"),
    ({"x": [[1.0, float("nan"), 3.0]], "edge_index": [[], []]}, "NaN"),
    ({"x": [], "edge_index": [[], []]}, "non-empty list of node feature rows"),
]


@pytest.mark.parametrize("graph, message", BAD_GRAPHS)
def test_the_processor_refuses_a_bad_graph_in_one_line(graph, message):
    with pytest.raises(UserError) as err:
        GraphProcessor(3).to_batch(graph["x"], graph["edge_index"])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_processor_refuses_too_many_nodes_or_edges_and_round_trips(tmp_path):
    processor = GraphProcessor(3, pos_encoding="laplacian", pos_dim=2)
    with pytest.raises(GraphTooLarge, match="3 nodes, more than the limit of 2"):
        processor.to_batch([[1.0, 0, 0]] * 3, [[], []], max_nodes=2)
    with pytest.raises(GraphTooLarge, match="2 edges, more than the limit of 1"):
        processor.to_batch([[1.0, 0, 0]] * 3, [[0, 1], [1, 0]], max_edges=1)
    with pytest.raises(GraphTooLarge, match="laplacian positional encodings has 20001 nodes"):
        processor.positions(torch.zeros(2, 0, dtype=torch.long), 20_001)
    batch = processor.to_batch([[1.0, 3.0, 0.0], [0.0, 0.0, 0.0]], [[0, 1], [1, 0]])
    torch.testing.assert_close(batch["x"], torch.tensor([[0.25, 0.75, 0.0], [0.0, 0.0, 0.0]]))
    assert batch["pos"].shape == (2, 2) and batch["edge_index"].dtype == torch.long
    processor.save(tmp_path)
    assert GraphProcessor.exists(tmp_path) and GraphProcessor.load(tmp_path) == processor


def test_a_bad_graph_file_is_one_line(tmp_path):
    np.savez(tmp_path / "partial.npz", x=np.ones((3, 2), np.float32))
    for path, message in [(tmp_path / "missing.npz", "does not exist"), (tmp_path / "partial.npz", "lacks the array")]:
        with pytest.raises(UserError, match=message):
            read_graph(path)
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(UserError, match="not a readable .npz graph file"):
        read_graph(tmp_path / "text.npz")


# -- node classification through the command line ------------------------------------------------

def karate_club(path):
    """Zachary's karate club: 34 nodes, the two clubs as labels, identity features; 2 labelled
    nodes per club to train, 6 to validate, the rest to test."""
    graph = networkx.karate_club_graph()
    pairs = np.array(list(graph.edges())).T
    y = np.array([graph.nodes[i]["club"] == "Officer" for i in range(34)], dtype=np.int64)
    train, val = np.zeros(34, bool), np.zeros(34, bool)
    train[[0, 1, 33, 32]] = True
    val[[2, 3, 4, 30, 31, 29]] = True
    np.savez(path, x=np.eye(34, dtype=np.float32), y=y, edge_index=np.concatenate([pairs, pairs[::-1]], axis=1),
             train_mask=train, val_mask=val, test_mask=~(train | val))
    return path


@pytest.mark.parametrize("model", ["preset=gcn-cora", "preset=gat-cora",
                                   "preset=graph-transformer-cora"])
def test_train_eval_and_classify_the_karate_club(model, tmp_path, capsys):
    data = karate_club(tmp_path / "karate.npz")
    run = tmp_path / "run"
    overrides = [f"model.{model}", "train.max_steps=60", "train.eval_interval=20", "train.progress=false",
                 "train.device=cpu"]
    if "transformer" in model:  # four labelled nodes: it overfits at lr 0.01 within 30 epochs
        overrides += ["data.pos_encoding=laplacian", "data.pos_dim=4", "model.global_attention=true", "model.dropout=0.1",
                      "train.max_steps=100", "train.eval_interval=5", "train.lr=0.003"]
    assert main(["train", "--data", str(data), "--out", str(run), *overrides]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(data)]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["test_nodes"] == 24 and scores["test_accuracy"] >= 0.75, scores  # one club: 0.5
    assert main(["classify", str(run), "--input", str(data)]) == 0
    out = capsys.readouterr()
    rows = [json.loads(line) for line in out.out.splitlines()]
    assert [r["node"] for r in rows] == list(range(34)) and "test accuracy" in out.err


def test_graph_verbs_refuse_in_one_line(tmp_path, capsys):
    data = karate_club(tmp_path / "karate.npz")
    run = tmp_path / "run"
    assert main(["train", "task=node_classification", "--data", str(data), "--out", str(run), "train.max_steps=1",
                 "train.progress=false"]) == 0
    capsys.readouterr()
    for argv in (["generate", str(run), "--prompt", "hi"], ["embed", str(data), "--model", str(run), "--out", str(tmp_path / "v.npy")],
                 ["classify", str(run), "--input", str(tmp_path / "none.json")],
                 ["eval", str(run), "--data", str(tmp_path / "none.npz")],
                 ["train", "--data", str(data), "--out", str(tmp_path / "r2"), "model.preset=gpt-tiny"]):
        assert main(argv) == 2, argv
        message = capsys.readouterr().err.strip().splitlines()[-1]
        assert "Traceback" not in message and message, argv
    (tmp_path / "graph.json").write_text(json.dumps({"x": np.eye(34).tolist(), "edge_index": [[0], [1]]}))
    assert main(["classify", str(run), "--input", str(tmp_path / "graph.json")]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 34


# -- serving ---------------------------------------------------------------------------------------

def test_the_server_labels_each_node_of_a_posted_graph_and_refuses_bad_ones():
    model = model_of("transformer")
    app = create_app(model, GraphProcessor(10, pos_encoding="random_walk", pos_dim=3),
                     ServeConfig(max_nodes=20, max_edges=40))
    x = torch.rand(6, 10).tolist()
    with TestClient(app) as client:
        reply = client.post("/v1/classify", json={"x": x, "edge_index": [[0, 1, 2], [1, 2, 0]]})
        assert reply.status_code == 200, reply.text
        data = reply.json()["data"]
        assert [row["node"] for row in data] == list(range(6))
        assert all(abs(sum(row["scores"].values()) - 1) < 1e-5 and row["label"] in row["scores"] for row in data)
        alone = client.post("/v1/classify", json={"x": x, "edge_index": [[], []]})
        assert alone.status_code == 200
        for body, status, message in [
            ({"x": torch.rand(21, 10).tolist(), "edge_index": [[], []]}, 413, "21 nodes, more than the limit of 20"),
            ({"x": x, "edge_index": [[0] * 41, [1] * 41]}, 413, "41 edges"),
            ({"x": x, "edge_index": [[0], [6]]}, 400, "names node 6"),
            ({"x": torch.rand(6, 4).tolist(), "edge_index": [[], []]}, 400, "nodes have 4 features"),
            ({"x": x, "edge_index": [[0.5], [1]]}, 400, "integer"),
            ({"x": x}, 422, "edge_index: required field is missing"),
            ({"input": "the cat"}, 422, "input: unknown field"),
        ]:
            reply = client.post("/v1/classify", json=body)
            error = reply.json()["error"]["message"]
            assert reply.status_code == status and message in error and "\n" not in error, (body.keys(), error)


def test_patience_stops_the_trainer_once_the_val_loss_stops_falling(tmp_path):
    model = model_of("gcn", dropout=0.0)
    batch = batch_for(model)
    labelled = batch["labels"] != -100
    wrong = torch.where(labelled, (batch["labels"] + 1) % 3, -100)  # val labels that training moves away from

    class Source:
        batches = {"train": Batch(batch, torch.ones(1)), "val": Batch({**batch, "labels": wrong}, torch.ones(1))}

        def sample(self, split, generator):
            return self.batches[split]

    config = TrainConfig(max_steps=40, lr=0.05, warmup_steps=0, schedule="constant", eval_interval=1, eval_batches=1,
                         patience=3, progress=False, device="cpu")
    trainer = Trainer(model, config, Source(), tmp_path / "run")
    trainer.train()
    assert trainer.step < 40 and trainer.evals_since_best == 3
    with pytest.raises(UserError, match="patience must be >= 0"):
        TrainConfig(patience=-1)
