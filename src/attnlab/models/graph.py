"""Graph neural networks: GCN, GAT and the graph transformer, one family with a `layer` choice.

One family, because the three share everything outside the message-passing layer: the batch (x,
edge_index, labels, optionally a `batch` vector and positional encodings), the processor, the
tasks, the verbs and the endpoint; they differ only in what one layer computes.

    layer=gcn          dropout -> GCNConv -> ReLU, ..., dropout -> GCNConv -> classes (Kipf & Welling 2017)
    layer=gat          dropout -> GATConv (heads concatenated) -> ELU, ..., dropout -> GATConv (out_heads
                       averaged) -> classes (Velickovic et al. 2018)
    layer=transformer  Linear(features) [+ Linear(positional encoding)] -> blocks of
                       [x + EdgeAttention(LN x) (+ global MultiHeadAttention(LN x), GraphGPS)] then
                       [x + FFN(LN x)] -> LN -> Linear -> classes

Two families share the network. `graph` labels nodes (readout=node: logits (N, C), trained by
node_classification); `graph_classifier` labels whole graphs (graph_classification): its per-node
outputs are pooled over each graph of a batch of many small graphs (readout mean, sum or max; the
`batch` vector (N,) gives each node's graph) -> logits (G, C). labels are (N,) or (G,), -100 where
not scored (the training mask).
"""

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..layers import FeedForward, MultiHeadAttention
from ..layers.attention import BACKENDS
from ..layers.graph import POOLINGS, EdgeAttention, GATConv, GCNConv, feature_dropout, global_pool, with_self_loops
from ..processors.graph import GraphProcessor
from .base import GRAPH, PRESETS, FamilySpec, Model, ModelOutput, register

LAYERS = ("gcn", "gat", "transformer")


@dataclasses.dataclass
class GraphConfig(ModelConfig):
    family = "graph"
    readouts = ("node",)  # what `readout` may be in this family
    layer: str = "gcn"
    in_features: int = 16  # node feature width (the data's; the task sets it)
    num_classes: int = 4
    d_model: int = 16  # hidden width, all heads together
    n_layer: int = 2  # message-passing layers (gcn, gat: the last one outputs the classes)
    n_head: int = 1
    out_heads: int = 1  # gat: heads of the output layer, averaged
    ffn_hidden: int = None  # transformer: None: 2 * d_model
    dropout: float = 0.5  # on node features before each layer (transformer: also residual branches)
    attn_dropout: float = 0.0  # on attention weights (gat, transformer)
    value_dropout: float = 0.0  # gat: on each layer's projected features (the GAT paper's code: as dropout)
    dropout_per_head: bool = False  # gat: each head drops its input with its own mask (the GAT paper's code)
    global_attention: bool = False  # transformer: a global attention branch over each graph's nodes
    pos_dim: int = 0  # width of the positional encoding in the batch (`pos`, from the processor); 0: none
    readout: str = "node"  # node: a class per node; mean, sum or max (graph_classifier): per graph, pooled
    max_nodes: int = 100_000  # the largest graph the model takes (its context; the server's limit)
    id2label: dict = None  # str(class index) -> label name
    attn_backend: str = "sdpa"

    def validate(self):
        self.require_positive("in_features", "num_classes", "d_model", "n_layer", "n_head", "out_heads", "max_nodes")
        self.require_choice("layer", LAYERS)
        self.require_choice("readout", self.readouts)
        self.require_choice("attn_backend", BACKENDS)
        self.require_divisible("d_model", "n_head")
        self.require_fraction("dropout", "attn_dropout", "value_dropout")
        self.require_index_names("id2label", self.num_classes)
        if self.ffn_hidden is not None:
            self.require_positive("ffn_hidden")
        if not isinstance(self.pos_dim, int) or self.pos_dim < 0:
            raise self.invalid(f"pos_dim must be an integer >= 0, got {self.pos_dim!r}")
        if self.layer != "transformer" and (self.pos_dim or self.global_attention):
            raise self.invalid("pos_dim and global_attention belong to layer=transformer; set layer=transformer")
        if self.layer != "gat" and (self.value_dropout or self.dropout_per_head):
            raise self.invalid("value_dropout and dropout_per_head belong to layer=gat; set layer=gat or turn them off")

    @property
    def max_seq_len(self) -> int:
        """The context, in nodes (every family names its input bound max_seq_len)."""
        return self.max_nodes

    @property
    def per_graph(self) -> bool:
        """Whether the model labels whole graphs (a pooled readout) rather than their nodes."""
        return self.readout != "node"


@dataclasses.dataclass
class GraphClassifierConfig(GraphConfig):
    """The graph network of graph classification: one label per graph, from its nodes' pooled outputs."""

    family = "graph_classifier"
    readouts = POOLINGS
    readout: str = "mean"


class GraphBlock(nn.Module):
    """One layer of the network (the unit of FSDP, distillation and compression): a GCN or GAT
    convolution with the dropout before it, or a graph-transformer layer."""

    def __init__(self, c: GraphConfig, in_width: int, out_width: int, last: bool):
        super().__init__()
        self.kind, self.last = c.layer, last
        per_head = c.layer == "gat" and c.dropout_per_head
        self.dropout = 0.0 if per_head else c.dropout  # per head: the convolution drops its input
        if c.layer == "gcn":
            self.conv = GCNConv(in_width, out_width)
        elif c.layer == "gat":
            heads = c.out_heads if last else c.n_head
            self.conv = GATConv(in_width, out_width if last else out_width // heads, heads, concat=not last,
                                dropout=c.attn_dropout, value_dropout=c.value_dropout,
                                input_dropout=c.dropout if per_head else 0.0)
        else:
            self.norm1, self.norm2 = nn.LayerNorm(c.d_model), nn.LayerNorm(c.d_model)
            self.conv = EdgeAttention(c.d_model, c.d_model // c.n_head, c.n_head, dropout=c.attn_dropout,
                                      out_features=c.d_model)
            self.global_attn = (MultiHeadAttention(c.d_model, c.n_head, dropout=c.attn_dropout, backend=c.attn_backend)
                                if c.global_attention else None)
            self.ffn = FeedForward(c.d_model, c.ffn_hidden or 2 * c.d_model, "gelu", dropout=c.dropout)

    def forward(self, h: torch.Tensor, edge_index: torch.Tensor, same_graph: torch.Tensor = None) -> torch.Tensor:
        """h (N, in) -> (N, out). same_graph: (N, N) bool, which nodes share a graph (None: all do)."""
        if self.kind != "transformer":
            out = self.conv(feature_dropout(h, self.dropout, self.training), edge_index)
            return out if self.last else (F.relu(out) if self.kind == "gcn" else F.elu(out))
        x = self.norm1(h)
        update = self.conv(x, with_self_loops(edge_index, h.size(0)))  # (N, C)
        if self.global_attn is not None:
            mask = None if same_graph is None else same_graph[None, None]  # (1, 1, N, N)
            update = update + self.global_attn(x[None], mask=mask)[0]  # the nodes as one sequence
        h = h + F.dropout(update, self.dropout, self.training)
        return h + F.dropout(self.ffn(self.norm2(h)), self.dropout, self.training)


class GraphNetwork(Model):
    def __init__(self, config: GraphConfig):
        super().__init__(config)
        c = config
        transformer = c.layer == "transformer"
        if transformer:
            self.input_proj = nn.Linear(c.in_features, c.d_model)
            self.pos_proj = nn.Linear(c.pos_dim, c.d_model) if c.pos_dim else None
        widths = [c.d_model if transformer else c.in_features] + [c.d_model] * (c.n_layer - 1)
        outputs = [c.d_model] * (c.n_layer - 1) + [c.d_model if transformer else c.num_classes]
        self.blocks = nn.ModuleList(GraphBlock(c, i, o, last=k == c.n_layer - 1)
                                    for k, (i, o) in enumerate(zip(widths, outputs)))
        if transformer:
            self.norm = nn.LayerNorm(c.d_model)
            self.head = nn.Linear(c.d_model, c.num_classes)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, labels: torch.Tensor = None,
                batch: torch.Tensor = None, pos: torch.Tensor = None) -> ModelOutput:
        """x (N, F), edge_index (2, E), labels (N,) or (G,) with -100 where not scored, batch (N,)
        graph of each node, pos (N, pos_dim) -> logits (N, C) or (G, C), hidden_states (N, d_model)."""
        c = self.config
        if (pos is None) != (c.pos_dim == 0):
            raise ValueError(f"the model takes a positional encoding `pos` of width {c.pos_dim} (0: none)")
        same_graph = None if batch is None else batch[:, None] == batch[None, :]  # (N, N)
        h = self._embed(x, pos)
        for block in self.blocks[:-1]:
            h = block(h, edge_index, same_graph)
        hidden = h
        if c.layer == "transformer":
            hidden = self.norm(self.blocks[-1](h, edge_index, same_graph))  # (N, d_model)
            logits = self.head(F.dropout(hidden, c.dropout, self.training))
        else:
            logits = self.blocks[-1](h, edge_index)  # (N, C)
        if c.per_graph:
            graphs = 1 if batch is None else int(batch.max()) + 1
            batch = torch.zeros_like(logits[:, 0], dtype=torch.long) if batch is None else batch
            logits = global_pool(logits, batch, graphs, c.readout)  # (G, C)
        loss = None if labels is None else F.cross_entropy(logits, labels, ignore_index=-100)
        return ModelOutput(logits=logits, loss=loss, hidden_states=hidden)

    def _embed(self, x, pos):
        if self.config.layer != "transformer":
            return x
        h = self.input_proj(feature_dropout(x, self.config.dropout, self.training))  # (N, d_model)
        if pos is not None:
            if self.training:  # eigenvector signs are arbitrary: learn all of them
                pos = pos * (torch.randint(0, 2, (1, pos.size(1)), device=pos.device) * 2 - 1)
            h = h + self.pos_proj(pos)
        return h


def graph_batch(config: GraphConfig, generator: torch.Generator, nodes: int = 12, edges: int = 30) -> dict:
    """A random graph with symmetric edges, a few isolated nodes, and labels on half the nodes (-100
    elsewhere); for a graph classifier, three graphs (the edges between them dropped) and a label each."""
    x = torch.rand(nodes, config.in_features, generator=generator)
    pairs = torch.randint(nodes - 2, (2, edges // 2), generator=generator)  # the last two nodes are isolated
    batch = {"x": x, "edge_index": torch.cat([pairs, pairs.flip(0)], dim=1)}
    if config.pos_dim:
        batch["pos"] = torch.rand(nodes, config.pos_dim, generator=generator)
    if config.per_graph:
        batch["batch"] = graph_of = torch.arange(nodes) * 3 // nodes  # (N,) graphs 0, 1, 2
        source, target = batch["edge_index"]
        batch["edge_index"] = batch["edge_index"][:, graph_of[source] == graph_of[target]]  # no edge between graphs
        batch["labels"] = torch.randint(config.num_classes, (3,), generator=generator)
    else:
        labels = torch.randint(config.num_classes, (nodes,), generator=generator)
        batch["labels"] = labels.masked_fill(torch.arange(nodes) % 2 == 1, -100)
    return batch


PRESETS["graph-tiny"] = GraphConfig(layer="transformer", in_features=10, num_classes=3, d_model=16, n_layer=2,
                                    n_head=2, global_attention=True, pos_dim=4, dropout=0.1, max_nodes=64)
PRESETS["gcn-cora"] = GraphConfig(layer="gcn", in_features=1433, num_classes=7, d_model=16, dropout=0.5)
PRESETS["gat-cora"] = GraphConfig(layer="gat", in_features=1433, num_classes=7, d_model=64, n_head=8, dropout=0.6,
                                  attn_dropout=0.6)
PRESETS["graph-transformer-cora"] = GraphConfig(layer="transformer", in_features=1433, num_classes=7, d_model=64,
                                                n_head=4, n_layer=2, dropout=0.5, attn_dropout=0.3)


class GraphClassifier(GraphNetwork):
    """GraphNetwork with a pooled readout: (x, edge_index, batch) of many graphs -> logits (G, C)."""


# GAT, not the transformer: an edge-attention key bias gets no gradient (the softmax over a node's edges
# ignores it), and with mean pooling its gradient is exactly zero, which the doctor rightly reports
PRESETS["graph-classifier-tiny"] = GraphClassifierConfig(layer="gat", in_features=10, num_classes=3, d_model=16,
                                                         n_layer=2, n_head=2, dropout=0.1, max_nodes=64)

NO_ATTENTION_WEIGHTS = "graph networks pass messages along edges, not between the tokens of a sequence"
register(FamilySpec(GraphConfig, GraphNetwork, kind=GRAPH, block_class=GraphBlock, tiny_preset="graph-tiny",
                    example_batch=graph_batch, processor=GraphProcessor, modality="graph",
                    no_attention_weights=NO_ATTENTION_WEIGHTS))
register(FamilySpec(GraphClassifierConfig, GraphClassifier, kind=GRAPH, block_class=GraphBlock,
                    tiny_preset="graph-classifier-tiny", example_batch=graph_batch, processor=GraphProcessor,
                    modality="graph", task="graph_classification", no_attention_weights=NO_ATTENTION_WEIGHTS))
