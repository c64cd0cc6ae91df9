"""Node classification: per-node label probabilities of a graph network, and its accuracy on each
split of a graph file."""

import torch

from ..data.graph import SPLITS, Graph
from .classification import classification_metrics


@torch.no_grad()
def node_probabilities(model, batch: dict) -> torch.Tensor:
    """{"x", "edge_index"[, "pos"]} -> (N, C) class probabilities of each node."""
    model.eval()
    device = next(model.parameters()).device
    return model(**{name: value.to(device) for name, value in batch.items()}).logits.float().softmax(-1).cpu()


def label_names(config) -> list:
    """The config's id2label in index order; LABEL_i where it names none."""
    if config.id2label:
        return [config.id2label[str(i)] for i in range(config.num_classes)]
    return [f"LABEL_{i}" for i in range(config.num_classes)]


def node_scores(model, processor, graph: Graph, what: str) -> dict:
    """Accuracy and macro F1 on each split's nodes (test first), with the test confusion matrix."""
    predicted = node_probabilities(model, processor.to_batch(graph.x, graph.edge_index, what=what)).argmax(-1)
    names = label_names(model.config)
    scores = {}
    for split in ("test",) + tuple(s for s in SPLITS if s != "test"):
        nodes = graph.masks[split]
        metrics = classification_metrics(predicted[nodes].tolist(), graph.y[nodes].tolist(), names)
        scores.update({f"{split}_accuracy": metrics["accuracy"], f"{split}_macro_f1": metrics["macro_f1"],
                       f"{split}_nodes": metrics["examples"]})
        if split == "test":
            scores["test_confusion_matrix"] = metrics["confusion_matrix"]
    return scores
