"""The graph tasks.

`node_classification`: a graph network trained full-batch on one graph (.npz with x, y, edge_index
and train/val/test masks, as ../shared/data/planetoid): the loss on the train mask's nodes, the
validation loss on the val mask's, which picks best/ and stops the run after train.patience
evaluations without improvement.

    task: node_classification
    model: {preset: gcn-cora}      # gcn-cora, gat-cora, graph-transformer-cora, or family: graph plus fields
    data:  {path: cora.npz, normalize: row, pos_encoding: none, pos_dim: 0}

Each training step is one epoch. The defaults follow Kipf & Welling: 200 epochs at lr 0.01 with
weight decay 5e-4 and a constant schedule; an evaluation (and checkpoint) every 10 epochs, and a
patience of 10 evaluations (100 epochs, the GAT paper's).

`graph_classification`: a graph classifier (family graph_classifier) trained on batches of
train.batch_size whole graphs drawn from an .npz of many graphs (data/graph.py: x, edge_index,
graph_ptr, y and masks per graph); the val mask's graphs pick best/, and their accuracy is logged.

    task: graph_classification
    model: {family: graph_classifier, layer: gcn, readout: mean, d_model: 64, n_layer: 3}
    data:  {path: graphs.npz, normalize: none, pos_encoding: random_walk, pos_dim: 8}
"""

import dataclasses
from pathlib import Path

from ...checkpoint import load_checkpoint
from ...config import Config
from ...data.graph import FullGraphBatches, GraphSetBatches, read_graph, read_graph_set
from ...errors import UserError
from ...evaluation.graph import graph_probabilities
from ...models.base import GRAPH, build_model, families_of_kind
from ...processors.graph import NORMALIZATIONS, POS_ENCODINGS, GraphProcessor
from .base import Run, Task, model_config


@dataclasses.dataclass
class GraphData(Config):
    section = "data"
    path: str = None  # .npz graph file
    normalize: str = "row"
    pos_encoding: str = "none"  # laplacian | random_walk: the graph transformer's positional encoding
    pos_dim: int = 0  # its width (eigenvectors or walk steps)

    def validate(self):
        self.require_choice("normalize", NORMALIZATIONS)
        self.require_choice("pos_encoding", POS_ENCODINGS)
        if (self.pos_encoding == "none") != (self.pos_dim == 0):
            raise self.invalid("pos_dim must be positive with a pos_encoding and 0 without one")


@dataclasses.dataclass
class NoTokenizer(Config):
    """A graph task reads no text: the tokenizer section must stay empty."""

    section = "tokenizer"


def node_classification(run: Run, run_dir: Path, resume: bool):
    graph = read_graph(_data_path(run.data, "an .npz graph file"))
    model, processor = _model_and_processor(run, run_dir, resume, graph.x.size(1), graph.num_classes,
                                            {"preset": "gcn-cora"})
    inputs = processor.to_batch(graph.x, graph.edge_index, what=run.data.path)
    return model, processor, FullGraphBatches(inputs, graph)


def graph_classification(run: Run, run_dir: Path, resume: bool):
    graph_set = read_graph_set(_data_path(run.data, "an .npz file of many graphs"))
    model, processor = _model_and_processor(run, run_dir, resume, graph_set.in_features, graph_set.num_classes,
                                            {"family": "graph_classifier"})
    if not model.config.per_graph:
        raise UserError(f"graph_classification trains a graph_classifier (a readout pooling each graph), but the "
                        f"model is a {model.config.family} network with readout=node; use family: graph_classifier")
    graphs = [processor.to_batch(x, edges, max_nodes=model.config.max_nodes, what=f"{run.data.path} graph {i}")
              for i, (x, edges) in enumerate(graph_set.graphs)]
    return model, processor, GraphSetBatches(graphs, graph_set, run.train.batch_size)


def val_accuracy(batches: GraphSetBatches, model) -> dict:
    """{"val_accuracy"} over every validation graph."""
    members = batches.members["val"]
    predicted = graph_probabilities(model, [batches.graphs[i] for i in members.tolist()], batches.batch_size)
    model.train()
    return {"val_accuracy": float((predicted.argmax(-1) == batches.y[members]).float().mean())}


def _data_path(data: GraphData, what: str) -> str:
    if data.path is None:
        raise UserError(f"data.path is missing: point it at {what} (or pass --data)")
    return data.path


def _model_and_processor(run: Run, run_dir: Path, resume: bool, in_features: int, num_classes: int, default: dict):
    """The run's model and processor: resumed from last/, or built from the model section (`default`
    when it names neither a preset nor a family) for the data's feature width and class count."""
    if resume:
        return load_checkpoint(run_dir / "last", families=families_of_kind(GRAPH))
    data = run.data
    section = run.model if "preset" in run.model or "family" in run.model else {**default, **run.model}
    config = model_config(section, GRAPH, in_features=in_features, num_classes=num_classes, pos_dim=data.pos_dim)
    return build_model(config), GraphProcessor(in_features, data.normalize, data.pos_encoding, data.pos_dim)


NODE_CLASSIFICATION = Task("node_classification", GRAPH, node_classification, data=GraphData, tokenizer=NoTokenizer,
                           family="graph", train_defaults={"max_steps": 200, "lr": 0.01, "weight_decay": 5e-4,
                                                           "warmup_steps": 0, "schedule": "constant", "grad_clip": 0.0,
                                                           "eval_interval": 10, "eval_batches": 1, "patience": 10,
                                                           "log_interval": 10})
GRAPH_CLASSIFICATION = Task("graph_classification", GRAPH, graph_classification, data=GraphData,
                            tokenizer=NoTokenizer, family="graph_classifier", val_scores=val_accuracy, batch_size=32)
