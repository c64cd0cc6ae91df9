"""Graph networks' predictions and accuracy: per-node label probabilities of one graph and per-graph
probabilities of many, and the accuracy on each split of a graph file."""

import torch

from ..data.graph import SPLITS, Graph, GraphSet, collate_graphs
from .classification import classification_metrics


@torch.no_grad()
def node_probabilities(model, batch: dict) -> torch.Tensor:
    """{"x", "edge_index"[, "pos"]} -> (N, C) class probabilities of each node."""
    model.eval()
    device = next(model.parameters()).device
    return model(**{name: value.to(device) for name, value in batch.items()}).logits.float().softmax(-1).cpu()


def graph_probabilities(model, graphs: list, batch_size: int = 64) -> torch.Tensor:
    """Processed graphs [{"x", "edge_index"[, "pos"]}] -> (G, C) class probabilities of each graph,
    batch_size graphs at a time."""
    parts = [node_probabilities(model, collate_graphs(graphs[start:start + batch_size]).inputs)
             for start in range(0, len(graphs), batch_size)]
    return torch.cat(parts)


def label_names(config) -> list:
    """The config's id2label in index order; LABEL_i where it names none."""
    if config.id2label:
        return [config.id2label[str(i)] for i in range(config.num_classes)]
    return [f"LABEL_{i}" for i in range(config.num_classes)]


def node_scores(model, processor, graph: Graph, what: str) -> dict:
    """Accuracy and macro F1 on each split's nodes (test first), with the test confusion matrix."""
    predicted = node_probabilities(model, processor.to_batch(graph.x, graph.edge_index, what=what)).argmax(-1)
    return split_scores(predicted, graph.y, graph.masks, label_names(model.config), "nodes")


def graph_set_probabilities(model, processor, graph_set: GraphSet, what: str, batch_size: int = 64) -> torch.Tensor:
    """(G, C) class probabilities of every graph of a graph set (`what` names it in errors)."""
    graphs = [processor.to_batch(x, edges, max_nodes=model.config.max_nodes, what=f"{what} graph {i}")
              for i, (x, edges) in enumerate(graph_set.graphs)]
    return graph_probabilities(model, graphs, batch_size)


def graph_set_scores(model, processor, graph_set: GraphSet, what: str, batch_size: int = 64) -> dict:
    """Accuracy and macro F1 on each split's graphs (test first), with the test confusion matrix."""
    predicted = graph_set_probabilities(model, processor, graph_set, what, batch_size).argmax(-1)
    return split_scores(predicted, graph_set.y, graph_set.masks, label_names(model.config), "graphs")


def split_scores(predicted: torch.Tensor, gold: torch.Tensor, masks: dict, names: list, unit: str) -> dict:
    """Scores of predicted (M,) against gold (M,) on each split's mask (M,): {split}_accuracy,
    {split}_macro_f1, {split}_{unit} (how many), and the test confusion matrix."""
    scores = {}
    for split in ("test",) + tuple(s for s in SPLITS if s != "test"):
        chosen = masks[split]
        metrics = classification_metrics(predicted[chosen].tolist(), gold[chosen].tolist(), names)
        scores.update({f"{split}_accuracy": metrics["accuracy"], f"{split}_macro_f1": metrics["macro_f1"],
                       f"{split}_{unit}": metrics["examples"]})
        if split == "test":
            scores["test_confusion_matrix"] = metrics["confusion_matrix"]
    return scores
