"""Graph data: one graph in an .npz file (x, y, edge_index and train/val/test masks, the format of
../shared/data/planetoid), and the full-batch source that trains node classification on it.

    x (N, F) float node features, y (N,) int labels, edge_index (2, E) int [sources; targets],
    train_mask / val_mask / test_mask (N,) bool
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
    if not path.is_file():
        raise UserError(f"graph file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [name for name in ARRAYS if name not in data.files]
            if missing:
                raise UserError(f"{path} lacks the array(s) {', '.join(missing)}; a graph file holds "
                                f"{', '.join(ARRAYS)}")
            arrays = {name: torch.from_numpy(np.asarray(data[name])) for name in ARRAYS}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise UserError(f"{path} is not a readable .npz graph file ({err})") from None
    n = arrays["x"].shape[0] if arrays["x"].dim() == 2 else -1
    shapes_ok = n > 0 and arrays["y"].shape == (n,) and all(arrays[f"{s}_mask"].shape == (n,) for s in SPLITS)
    if not shapes_ok or arrays["y"].is_floating_point() or (arrays["y"] < 0).any():
        raise UserError(f"{path}: x must be (N, F), and y and the masks (N,), with labels 0..C-1")
    masks = {split: arrays[f"{split}_mask"].bool() for split in SPLITS}
    return Graph(arrays["x"].float(), arrays["y"].long(), arrays["edge_index"], masks)


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
