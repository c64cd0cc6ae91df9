"""Message passing over graphs with plain torch index operations: GCN, GAT, and dot-product
attention restricted to a graph's edges (the graph-transformer layer).

Conventions. A graph of N nodes has features x (N, F) and edges edge_index (2, E): row 0 the
source j, row 1 the target i of each edge j -> i; a node aggregates the messages of its incoming
edges. Nodes without incoming edges (isolated nodes, a graph with no edges) receive nothing: their
attention output is zero, never NaN, as for a fully masked query in layers/attention.py. Each layer
declares its linears in `projections` (compression target -> attribute names), as attention and
feed-forward layers do, so LoRA, quantisation and pruning reach them (compression/targets.py).

A Transformer's self-attention is `EdgeAttention` on the complete graph (every i receives from every
j, itself included): tests/layers/test_graph_layers.py checks it against `MultiHeadAttention`.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def without_self_loops(edge_index: torch.Tensor) -> torch.Tensor:
    """(2, E) -> (2, E') with the edges i -> i removed."""
    return edge_index[:, edge_index[0] != edge_index[1]]


def with_self_loops(edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """(2, E) -> (2, E' + N): exactly one self-loop per node (existing ones are replaced)."""
    loops = torch.arange(num_nodes, device=edge_index.device).expand(2, num_nodes)
    return torch.cat([without_self_loops(edge_index), loops], dim=1)


def gcn_norm(edge_index: torch.Tensor, num_nodes: int, dtype=torch.float32):
    """The edges of A + I and their weights in D^-1/2 (A + I) D^-1/2 -> (edge_index (2, E'), weight (E',)).
    The degree counts incoming edges (for a symmetric graph, the same as outgoing)."""
    edge_index = with_self_loops(edge_index, num_nodes)
    source, target = edge_index
    degree = torch.zeros(num_nodes, dtype=dtype, device=edge_index.device)
    degree.index_add_(0, target, torch.ones(target.numel(), dtype=dtype, device=edge_index.device))
    inv_sqrt = degree.rsqrt()  # every node has its self-loop: degree >= 1
    return edge_index, inv_sqrt[source] * inv_sqrt[target]


def segment_softmax(scores: torch.Tensor, index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """Softmax of scores (E, H) over the edges that share a target index (E,) -> (E, H)."""
    expanded = index[:, None].expand_as(scores)
    peak = scores.new_full((num_nodes, scores.size(1)), float("-inf"))
    peak = peak.scatter_reduce(0, expanded, scores, reduce="amax", include_self=True)  # (N, H)
    weights = (scores - peak[index]).exp()  # the largest term of each segment is 1: no 0/0
    total = scores.new_zeros(num_nodes, scores.size(1)).index_add_(0, index, weights)  # (N, H)
    return weights / total[index]


def aggregate(messages: torch.Tensor, target: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """Sum of messages (E, ...) into their target nodes -> (N, ...); zero where none arrive."""
    return messages.new_zeros(num_nodes, *messages.shape[1:]).index_add_(0, target, messages)


POOLINGS = ("mean", "sum", "max")


def global_pool(values: torch.Tensor, batch: torch.Tensor, num_graphs: int, reduce: str = "mean") -> torch.Tensor:
    """The mean, sum or max of values (N, C) over the nodes of each graph -> (G, C); batch (N,)
    numbers each node's graph 0..G-1. A graph without nodes pools to zeros."""
    if reduce == "sum":
        return aggregate(values, batch, num_graphs)
    if reduce == "mean":
        counts = values.new_zeros(num_graphs).index_add_(0, batch, values.new_ones(batch.numel()))  # (G,)
        return aggregate(values, batch, num_graphs) / counts.clamp(min=1)[:, None]
    index = batch[:, None].expand_as(values)
    return values.new_zeros(num_graphs, values.size(1)).scatter_reduce(0, index, values, "amax", include_self=False)


def merge_heads(out: torch.Tensor, concat: bool) -> torch.Tensor:
    """(N, H, C) -> (N, H * C) concatenated, or (N, C) averaged over heads."""
    return out.flatten(1) if concat else out.mean(dim=1)


def feature_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """F.dropout with the same distribution (zero with probability p, else scaled by 1/(1-p)), drawn
    from uniform numbers: on one CPU thread about twice as fast as F.dropout's Bernoulli sampling,
    which dominates a GAT epoch on a wide bag-of-words input (Cora: 2708 x 1433)."""
    if not training or p == 0:
        return x
    return x * (torch.rand_like(x) >= p) * (1.0 / (1.0 - p))


class GCNConv(nn.Module):
    """Kipf & Welling (2017): X' = D^-1/2 (A + I) D^-1/2 X W + b."""

    projections = {"v": ("lin",)}

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.lin = nn.Linear(in_features, out_features, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """x (N, F), edge_index (2, E) -> (N, out)."""
        h = self.lin(x)  # (N, out)
        edges, weight = gcn_norm(edge_index, x.size(0), h.dtype)
        out = aggregate(h[edges[0]] * weight[:, None], edges[1], x.size(0))  # (N, out)
        return out if self.bias is None else out + self.bias


class GATConv(nn.Module):
    """Velickovic et al. (2018): per head, e_ij = LeakyReLU(a_dst . W x_i + a_src . W x_j) over the
    edges j -> i plus a self-loop, softmax over each node's incoming edges, attention dropout, then
    the weighted sum of W x_j; heads concatenated or averaged, plus a bias. `value_dropout` drops
    the projected features W x_j after the scores are taken from them, and `input_dropout` drops
    the input with a mask drawn anew for each head before its projection, both as the paper's code
    does (with its input dropout rate); PyG's GATConv has neither."""

    projections = {"v": ("lin",)}

    def __init__(self, in_features: int, out_features: int, n_head: int = 1, concat: bool = True,
                 negative_slope: float = 0.2, dropout: float = 0.0, bias: bool = True, value_dropout: float = 0.0,
                 input_dropout: float = 0.0):
        super().__init__()
        self.n_head, self.head_dim, self.concat = n_head, out_features, concat
        self.negative_slope, self.dropout, self.value_dropout = negative_slope, dropout, value_dropout
        self.input_dropout = input_dropout
        self.lin = nn.Linear(in_features, n_head * out_features, bias=False)
        self.att_src = nn.Parameter(torch.empty(n_head, out_features))
        self.att_dst = nn.Parameter(torch.empty(n_head, out_features))
        self.bias = nn.Parameter(torch.zeros(n_head * out_features if concat else out_features)) if bias else None
        nn.init.xavier_uniform_(self.lin.weight)
        nn.init.xavier_uniform_(self.att_src)
        nn.init.xavier_uniform_(self.att_dst)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """x (N, F), edge_index (2, E) -> (N, H * out) or (N, out)."""
        n = x.size(0)
        h = self.project(x)  # (N, H, C)
        source, target = with_self_loops(edge_index, n)
        score_src = (h * self.att_src).sum(-1)  # (N, H)
        score_dst = (h * self.att_dst).sum(-1)  # (N, H)
        scores = F.leaky_relu(score_src[source] + score_dst[target], self.negative_slope)  # (E, H)
        alpha = segment_softmax(scores, target, n)
        alpha = F.dropout(alpha, self.dropout, self.training)
        values = feature_dropout(h, self.value_dropout, self.training)  # (N, H, C)
        out = merge_heads(aggregate(values[source] * alpha[..., None], target, n), self.concat)
        return out if self.bias is None else out + self.bias

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, F) -> W x (N, H, C), each head from its own dropout of x when input_dropout is set.
        The masks are drawn over x's non-zero entries only (dropping a zero changes nothing), so a
        sparse bag-of-words input costs its non-zeros per head, not H dense copies of x."""
        p, n_head = self.input_dropout, self.n_head
        if not self.training or p == 0 or n_head == 1:
            return self.lin(feature_dropout(x, p, self.training)).view(x.size(0), n_head, self.head_dim)
        rows, cols = x.nonzero(as_tuple=True)  # (nnz,)
        kept = torch.rand((n_head, rows.numel()), device=x.device) >= p  # (H, nnz): a mask per head
        values = x[rows, cols] * kept / (1 - p)  # (H, nnz)
        weight = self.lin.weight.view(n_head, self.head_dim, -1)[:, :, cols]  # (H, C, nnz)
        out = x.new_zeros(n_head, self.head_dim, x.size(0)).index_add_(2, rows, weight * values[:, None])  # (H, C, N)
        return out.permute(2, 0, 1)  # (N, H, C)


class EdgeAttention(nn.Module):
    """Scaled dot-product attention restricted to edges: node i attends to the sources j of its
    incoming edges j -> i with softmax_j(q_i . k_j / sqrt(C)) per head (Shi et al. 2021, the
    graph-transformer layer). `out_proj` (Transformer-style) and/or a `skip_proj` of the node's own
    features (the root weight of PyG's TransformerConv) are optional. No self-loops are added: on
    the complete graph with self-loops this is a Transformer's multi-head self-attention."""

    projections = {"q": ("q_proj",), "k": ("k_proj",), "v": ("v_proj", "skip_proj"), "o": ("out_proj",)}

    def __init__(self, in_features: int, head_dim: int, n_head: int = 1, concat: bool = True, dropout: float = 0.0,
                 out_features: int = None, skip: bool = False, bias: bool = True):
        """out_features: the width of an output projection of the merged heads (None: no projection)."""
        super().__init__()
        self.n_head, self.head_dim, self.concat, self.dropout = n_head, head_dim, concat, dropout
        merged = n_head * head_dim if concat else head_dim
        self.q_proj = nn.Linear(in_features, n_head * head_dim, bias=bias)
        self.k_proj = nn.Linear(in_features, n_head * head_dim, bias=bias)
        self.v_proj = nn.Linear(in_features, n_head * head_dim, bias=bias)
        self.out_proj = nn.Linear(merged, out_features, bias=bias) if out_features else None
        self.skip_proj = nn.Linear(in_features, merged, bias=bias) if skip else None

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, return_weights: bool = False):
        """x (N, F), edge_index (2, E) -> (N, out) [and the weights (E, H) of the edges]."""
        n, shape = x.size(0), (x.size(0), self.n_head, self.head_dim)
        q, k, v = self.q_proj(x).view(shape), self.k_proj(x).view(shape), self.v_proj(x).view(shape)  # (N, H, C)
        source, target = edge_index
        scores = (q[target] * k[source]).sum(-1) / math.sqrt(self.head_dim)  # (E, H)
        alpha = segment_softmax(scores, target, n)
        dropped = F.dropout(alpha, self.dropout, self.training)
        out = merge_heads(aggregate(v[source] * dropped[..., None], target, n), self.concat)  # (N, H * C) or (N, C)
        if self.skip_proj is not None:
            out = out + self.skip_proj(x)
        if self.out_proj is not None:
            out = self.out_proj(out)
        return (out, alpha) if return_weights else out


def complete_graph(num_nodes: int, device=None) -> torch.Tensor:
    """Every ordered pair (j, i), self-loops included -> edge_index (2, N * N)."""
    nodes = torch.arange(num_nodes, device=device)
    return torch.stack([nodes.repeat(num_nodes), nodes.repeat_interleave(num_nodes)])


# -- positional encodings (computed once per graph, by the processor) ------------------------------

def random_walk_pe(edge_index: torch.Tensor, num_nodes: int, steps: int) -> torch.Tensor:
    """Random-walk structural encoding (Dwivedi et al. 2022): the return probabilities
    [P_ii, (P^2)_ii, ..., (P^steps)_ii] of the walk P = D^-1 A -> (N, steps). Sparse P times a dense
    (N, N) power: O(E N) a step."""
    edge_index = without_self_loops(edge_index)
    source, target = edge_index
    degree = torch.zeros(num_nodes).index_add_(0, source, torch.ones(source.numel()))
    weight = 1.0 / degree.clamp(min=1)[source]  # P[j, i] = 1 / deg(j) for each edge j -> i
    walk = torch.sparse_coo_tensor(edge_index, weight, (num_nodes, num_nodes),
                                   check_invariants=True).coalesce()
    power, diagonals = torch.eye(num_nodes), []
    for _ in range(steps):
        power = torch.sparse.mm(walk, power)  # P^k = P P^(k-1)
        diagonals.append(power.diagonal())
    return torch.stack(diagonals, dim=1)  # (N, steps)


def laplacian_pe(edge_index: torch.Tensor, num_nodes: int, dims: int) -> torch.Tensor:
    """The eigenvectors of the `dims` smallest non-trivial eigenvalues of the symmetric normalised
    Laplacian I - D^-1/2 A D^-1/2 -> (N, dims), zero-padded when the graph has fewer nodes. Their
    signs are arbitrary: the model flips them at random in training."""
    edge_index = without_self_loops(edge_index)
    adjacency = torch.zeros(num_nodes, num_nodes, dtype=torch.float64)
    adjacency[edge_index[1], edge_index[0]] = 1.0
    adjacency = torch.maximum(adjacency, adjacency.T)  # the Laplacian of the undirected graph
    inv_sqrt = adjacency.sum(1).clamp(min=1).rsqrt()
    laplacian = torch.eye(num_nodes, dtype=torch.float64) - inv_sqrt[:, None] * adjacency * inv_sqrt[None, :]
    _, vectors = torch.linalg.eigh(laplacian)  # ascending eigenvalues
    vectors = vectors[:, 1:dims + 1].float()  # skip the trivial first one
    return F.pad(vectors, (0, dims - vectors.size(1)))
