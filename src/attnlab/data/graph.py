"""Graph data in .npz files, and the batch sources that train on it.

One graph (node classification; the format of ../shared/data/planetoid), trained full-batch:

    x (N, F) float node features, y (N,) int labels, edge_index (2, E) int [sources; targets],
    train_mask / val_mask / test_mask (N,) bool

Many small graphs (graph classification), their nodes concatenated, trained in batches of graphs:

    x (N, F), edge_index (2, E) numbering the nodes of all graphs together (no edge joins two graphs),
    graph_ptr (G + 1,) int: graph g holds nodes graph_ptr[g] .. graph_ptr[g + 1] - 1,
    y (G,) int labels, train_mask / val_mask / test_mask (G,) bool
"""

import dataclasses
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .batch import Batch

SPLITS = ("train", "val", "test")
ARRAYS = ("x", "y", "edge_index") + tuple(f"{split}_mask" for split in SPLITS)
SET_ARRAYS = ARRAYS + ("graph_ptr",)


@dataclasses.dataclass
class Graph:
    x: torch.Tensor  # (N, F)
    y: torch.Tensor  # (N,)
    edge_index: torch.Tensor  # (2, E)
    masks: dict  # split -> (N,) bool

    @property
    def num_classes(self) -> int:
        return int(self.y.max()) + 1

    def labels(self, split: str) -> torch.Tensor:
        """y where the split's mask is set, -100 elsewhere: (N,)."""
        return self.y.masked_fill(~self.masks[split], -100)


def read_graph(path) -> Graph:
    """An .npz graph file -> Graph; a missing file or array, or a wrong shape, is one line."""
    path = Path(path)
    arrays = _read_arrays(path, ARRAYS, "a graph file")
    if is_graph_set(path):
        raise UserError(f"{path} holds many graphs (it has graph_ptr); a graph network labels the nodes of one graph, "
                        "a graph_classifier labels many")
    n = arrays["x"].shape[0] if arrays["x"].dim() == 2 else -1
    shapes_ok = n > 0 and arrays["y"].shape == (n,) and all(arrays[f"{s}_mask"].shape == (n,) for s in SPLITS)
    if not shapes_ok or arrays["y"].is_floating_point() or (arrays["y"] < 0).any():
        raise UserError(f"{path}: x must be (N, F), and y and the masks (N,), with labels 0..C-1")
    masks = {split: arrays[f"{split}_mask"].bool() for split in SPLITS}
    return Graph(arrays["x"].float(), arrays["y"].long(), arrays["edge_index"], masks)


def is_graph_set(path) -> bool:
    """Whether an .npz file holds many graphs (a graph_ptr array) rather than one."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return "graph_ptr" in data.files
    except (OSError, ValueError, zipfile.BadZipFile):
        return False  # read_graph says what is wrong with it


def _read_arrays(path: Path, names: tuple, what: str) -> dict:
    if not path.is_file():
        raise UserError(f"graph file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [name for name in names if name not in data.files]
            if missing:
                raise UserError(f"{path} lacks the array(s) {', '.join(missing)}; {what} holds {', '.join(names)}")
            return {name: torch.from_numpy(np.asarray(data[name])) for name in names}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise UserError(f"{path} is not a readable .npz graph file ({err})") from None


@dataclasses.dataclass
class GraphSet:
    """Many graphs, each (x (n, F), edge_index (2, e) numbering its own nodes 0..n-1), a label each."""

    graphs: list
    y: torch.Tensor  # (G,)
    masks: dict  # split -> (G,) bool

    @property
    def num_classes(self) -> int:
        return int(self.y.max()) + 1

    @property
    def in_features(self) -> int:
        return self.graphs[0][0].size(1)


def read_graph_set(path) -> GraphSet:
    """An .npz file of many graphs -> GraphSet; each problem one line naming it."""
    path = Path(path)
    arrays = _read_arrays(path, SET_ARRAYS, "a file of many graphs")
    x, edges, ptr, y = arrays["x"], arrays["edge_index"], arrays["graph_ptr"], arrays["y"]
    g = ptr.numel() - 1
    shapes_ok = (x.dim() == 2 and ptr.dim() == 1 and g > 0 and y.shape == (g,)
                 and all(arrays[f"{s}_mask"].shape == (g,) for s in SPLITS))
    if not shapes_ok or y.is_floating_point() or ptr.is_floating_point() or (y < 0).any():
        raise UserError(f"{path}: x must be (N, F), graph_ptr (G + 1,) integers, and y and the masks (G,), with labels "
                        "0..C-1")
    sizes = ptr.diff()
    if ptr[0] != 0 or ptr[-1] != x.size(0) or (sizes < 1).any():
        raise UserError(f"{path}: graph_ptr must rise from 0 to the node count {x.size(0)}, each graph at least one node")
    if edges.dim() != 2 or edges.size(0) != 2 or edges.is_floating_point():
        raise UserError(f"{path}: edge_index must be integers of shape (2, E), got {tuple(edges.shape)}")
    edges = edges.long()
    if edges.numel() and (edges.min() < 0 or edges.max() >= x.size(0)):
        raise UserError(f"{path}: edge_index names nodes outside 0..{x.size(0) - 1}")
    graph_of = torch.bucketize(edges.contiguous(), ptr[1:].long(), right=True)  # (2, E) the graph of each end
    if not torch.equal(graph_of[0], graph_of[1]):
        raise UserError(f"{path}: an edge joins two graphs (edge {int((graph_of[0] != graph_of[1]).nonzero()[0])})")
    order = graph_of[0].argsort(stable=True)
    per_graph = (edges[:, order] - ptr[graph_of[0][order]]).split(torch.bincount(graph_of[0], minlength=g).tolist(), 1)
    graphs = list(zip(x.float().split(sizes.tolist()), per_graph))
    return GraphSet(graphs, y.long(), {split: arrays[f"{split}_mask"].bool() for split in SPLITS})


def write_graph_set(path, graphs: list, y, masks: dict):
    """Writes graphs [(x (n, F), edge_index (2, e) of its own nodes)] with labels y (G,) and split
    masks {split: (G,) bool} as an .npz file of many graphs."""
    sizes = [len(x) for x, _ in graphs]
    ptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    edges = [np.asarray(e, dtype=np.int64).reshape(2, -1) + start for (_, e), start in zip(graphs, ptr)]
    np.savez(path, x=np.concatenate([np.asarray(x, dtype=np.float32) for x, _ in graphs]),
             edge_index=np.concatenate(edges, axis=1), graph_ptr=ptr, y=np.asarray(y, dtype=np.int64),
             **{f"{split}_mask": np.asarray(masks[split], dtype=bool) for split in SPLITS})


@dataclasses.dataclass
class GraphBatch(Batch):
    """A batch of whole graphs: row i is graph i (labels (G,), row_tokens its node count), so a
    data-parallel rank's `rows` are whole graphs, collated again."""

    graphs: list = None  # the processed graphs collated into `inputs`

    def rows(self, start: int, stop: int) -> "GraphBatch":
        labels = self.inputs.get("labels")
        return collate_graphs(self.graphs[start:stop], None if labels is None else labels[start:stop])


def collate_graphs(graphs: list, labels: torch.Tensor = None) -> GraphBatch:
    """Processed graphs [{"x" (n, F), "edge_index" (2, e)[, "pos" (n, P)]}] -> one batch: their nodes
    concatenated, edges renumbered, and `batch` (N,) naming each node's graph; labels (G,) if given."""
    sizes = torch.tensor([graph["x"].size(0) for graph in graphs])
    starts = (sizes.cumsum(0) - sizes).tolist()
    inputs = {"x": torch.cat([graph["x"] for graph in graphs]),
              "edge_index": torch.cat([graph["edge_index"] + start for graph, start in zip(graphs, starts)], dim=1),
              "batch": torch.arange(len(graphs)).repeat_interleave(sizes)}
    if "pos" in graphs[0]:
        inputs["pos"] = torch.cat([graph["pos"] for graph in graphs])
    if labels is not None:
        inputs["labels"] = labels
    return GraphBatch(inputs, sizes, graphs)


class GraphSetBatches:
    """Random batches of `batch_size` graphs of a split (processed graphs, see collate_graphs)."""

    def __init__(self, graphs: list, graph_set: GraphSet, batch_size: int):
        self.graphs, self.y, self.batch_size = graphs, graph_set.y, batch_size
        self.members = {split: graph_set.masks[split].nonzero().flatten() for split in ("train", "val")}
        for split, members in self.members.items():
            if not len(members):
                raise UserError(f"the {split}_mask selects no graph; graph classification needs some to "
                                f"{'train on' if split == 'train' else 'select the best checkpoint by'}")

    def sample(self, split: str, generator: torch.Generator) -> GraphBatch:
        members = self.members[split]
        chosen = members[torch.randint(len(members), (self.batch_size,), generator=generator)]
        return collate_graphs([self.graphs[i] for i in chosen], self.y[chosen])


class FullGraphBatches:
    """Full-batch training: every `sample` is the whole graph, labelled on the split's nodes only."""

    def __init__(self, inputs: dict, graph: Graph):
        self.batches = {}
        for split in ("train", "val"):
            labelled = graph.masks[split]
            if not labelled.any():
                raise UserError(f"the graph's {split}_mask selects no node; node classification needs some to "
                                f"{'train on' if split == 'train' else 'select the best checkpoint by'}")
            self.batches[split] = Batch({**inputs, "labels": graph.labels(split)}, labelled.sum().reshape(1))

    def sample(self, split: str, generator: torch.Generator) -> Batch:
        return self.batches[split]
