"""The processor of graph families: a graph (node features, edges) -> the model's batch.

It is saved with the checkpoint (graph_processor.json) and holds what the data's preparation was:
the feature width, the feature normalisation (row-normalised bag-of-words, as Kipf & Welling and
Velickovic et al. prepare the citation graphs) and the positional encoding the model was trained
with. `to_batch` checks a graph from a file or a request, each problem one line naming it.
"""

import dataclasses
import json
from pathlib import Path

import torch

from ..errors import UserError
from ..layers.graph import laplacian_pe, random_walk_pe

PROCESSOR_FILE = "graph_processor.json"
NORMALIZATIONS = ("row", "none")
POS_ENCODINGS = ("none", "laplacian", "random_walk")
MAX_ENCODED_NODES = 20_000  # positional encodings are computed with dense (N, N) matrices


class GraphTooLarge(UserError):
    """A graph over a size limit (the server answers 413)."""


@dataclasses.dataclass
class GraphProcessor:
    in_features: int
    normalize: str = "row"  # "row": each node's features divided by their absolute sum (L1; a zero row stays zero)
    pos_encoding: str = "none"
    pos_dim: int = 0  # laplacian: eigenvectors, random_walk: steps

    def __post_init__(self):
        if self.normalize not in NORMALIZATIONS or self.pos_encoding not in POS_ENCODINGS:
            raise UserError(f"graph processor: normalize must be one of {', '.join(NORMALIZATIONS)} and pos_encoding "
                            f"one of {', '.join(POS_ENCODINGS)}, got {self.normalize!r}, {self.pos_encoding!r}")
        if (self.pos_encoding == "none") != (self.pos_dim == 0):
            raise UserError(f"graph processor: pos_dim must be 0 without a positional encoding and positive with one, "
                            f"got pos_encoding={self.pos_encoding!r}, pos_dim={self.pos_dim}")

    # -- saved with the checkpoint -------------------------------------------------------------
    @staticmethod
    def exists(directory) -> bool:
        return (Path(directory) / PROCESSOR_FILE).is_file()

    @classmethod
    def load(cls, directory) -> "GraphProcessor":
        path = Path(directory) / PROCESSOR_FILE
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as err:
            raise UserError(f"{path} is not a graph processor file ({err}); re-save the checkpoint") from None

    def save(self, directory):
        (Path(directory) / PROCESSOR_FILE).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def example(cls, config) -> "GraphProcessor":
        """The processor of a model built from `config` (a graph family's), for tests and examples."""
        encoding = "none" if not config.pos_dim else "random_walk"
        return cls(config.in_features, pos_encoding=encoding, pos_dim=config.pos_dim)

    # -- graph -> batch --------------------------------------------------------------------------
    def to_batch(self, x, edge_index, max_nodes: int = None, max_edges: int = None, what: str = "the graph") -> dict:
        """Node features x (N, F) and edge_index (2, E) (tensors or nested lists) -> {"x", "edge_index"[, "pos"]}.
        One UserError for a malformed graph; GraphTooLarge past max_nodes or max_edges."""
        _check_size(what, _length(x), max_nodes, "nodes")  # before any conversion: a huge graph is refused cheaply
        if _length(edge_index) == 2:
            _check_size(what, _length(edge_index[0]), max_edges, "edges")
        x = _tensor(x, torch.float32, f"{what}: x")
        edges = _tensor(edge_index, None, f"{what}: edge_index")
        if x.dim() != 2 or x.size(0) == 0:
            raise UserError(f"{what}: x must be a non-empty list of node feature rows (N, F), got shape {tuple(x.shape)}")
        if x.size(1) != self.in_features:
            raise UserError(f"{what}: nodes have {x.size(1)} features, but the model takes {self.in_features}")
        if not torch.isfinite(x).all():
            raise UserError(f"{what}: x holds NaN or infinite values")
        if edges.numel() == 0:
            edges = edges.reshape(2, 0)
        if edges.dim() != 2 or edges.size(0) != 2:
            raise UserError(f"{what}: edge_index must be two rows [sources, targets], got shape {tuple(edges.shape)}")
        if edges.is_floating_point() and not torch.equal(edges, edges.round()):
            raise UserError(f"{what}: edge_index must hold integer node indices")
        edges = edges.long()
        n = x.size(0)
        if edges.numel() and (edges.min() < 0 or edges.max() >= n):
            bad = edges[(edges < 0) | (edges >= n)][0].item()
            raise UserError(f"{what}: edge_index names node {bad}, but the nodes are numbered 0..{n - 1}")
        batch = {"x": self.features(x), "edge_index": edges}
        if self.pos_encoding != "none":
            batch["pos"] = self.positions(edges, n)
        return batch

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, F) -> (N, F), normalised as the model was trained."""
        if self.normalize == "row":
            return x / x.abs().sum(dim=1, keepdim=True).clamp(min=1e-12)
        return x

    def positions(self, edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
        """(N, pos_dim) positional encoding of the graph."""
        _check_size(f"a graph with {self.pos_encoding} positional encodings", num_nodes, MAX_ENCODED_NODES, "nodes")
        if self.pos_encoding == "laplacian":
            return laplacian_pe(edge_index, num_nodes, self.pos_dim)
        return random_walk_pe(edge_index, num_nodes, self.pos_dim)


def _length(value) -> int:
    """len(value), or 0 for what has none (a number, a 0-d tensor): the checks after refuse it."""
    try:
        return len(value)
    except TypeError:
        return 0


def _check_size(what: str, count: int, limit, unit: str):
    if limit is not None and count > limit:
        raise GraphTooLarge(f"{what} has {count} {unit}, more than the limit of {limit}; split it")


def _tensor(value, dtype, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value if dtype is None else value.to(dtype)
    try:
        tensor = torch.tensor(value, dtype=dtype)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        raise UserError(f"{what} must be a rectangular list of numbers") from None
    if tensor.dtype == torch.bool:
        raise UserError(f"{what} must hold numbers, not true/false")
    return tensor
