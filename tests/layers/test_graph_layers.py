"""The message-passing layers against PyTorch Geometric with copied weights on Cora, the
graph-transformer layer on the complete graph against the standard multi-head attention, and the
invariances any message-passing layer owes: relabelling nodes permutes the output; isolated
nodes and edgeless graphs give finite outputs."""

import networkx
import numpy as np
import pytest
import torch
from torch_geometric.nn import GATConv as PygGAT
from torch_geometric.nn import GCNConv as PygGCN
from torch_geometric.nn import TransformerConv as PygTransformer
from torch_geometric.nn import global_add_pool, global_max_pool, global_mean_pool

from attnlab.layers.attention import MultiHeadAttention
from attnlab.layers.graph import (EdgeAttention, GATConv, GCNConv, complete_graph, feature_dropout, global_pool,
                                  laplacian_pe, random_walk_pe, segment_softmax)


@pytest.fixture(scope="module")
def cora():
    from tests.conftest import DATA
    with np.load(DATA / "planetoid" / "cora.npz") as data:
        x = torch.from_numpy(data["x"])
        return x / x.sum(1, keepdim=True).clamp(min=1), torch.from_numpy(data["edge_index"])


def copy_linear(ours: torch.nn.Linear, theirs):
    """PyG's Linear keeps `weight` (out, in) and `bias` as torch's does."""
    with torch.no_grad():
        ours.weight.copy_(theirs.weight)
        if ours.bias is not None:
            ours.bias.copy_(theirs.bias)


def test_gcn_matches_pyg_on_cora(cora):
    x, edges = cora
    theirs = PygGCN(x.size(1), 16)
    ours = GCNConv(x.size(1), 16)
    copy_linear(ours.lin, theirs.lin)
    with torch.no_grad():
        ours.bias.copy_(torch.randn(16))
        theirs.bias.copy_(ours.bias)
        torch.testing.assert_close(ours(x, edges), theirs(x, edges), rtol=0, atol=1e-5)


@pytest.mark.parametrize("reduce, theirs", [("mean", global_mean_pool), ("sum", global_add_pool),
                                            ("max", global_max_pool)])
def test_pooling_matches_pyg_over_graphs_of_different_sizes(reduce, theirs):
    values = torch.randn(40, 5) - 3.0  # all negative mostly: max must not start from zero
    batch = torch.arange(6).repeat_interleave(torch.tensor([1, 12, 3, 9, 7, 8]))  # (40,) six graphs
    torch.testing.assert_close(global_pool(values, batch, 6, reduce), theirs(values, batch), rtol=0, atol=1e-6)
    assert global_pool(values, torch.zeros(40, dtype=torch.long), 2, reduce)[1].eq(0).all()  # an empty graph


@pytest.mark.parametrize("dropout", ["value_dropout", "input_dropout"])
def test_gat_paper_code_dropouts_act_in_training_only(cora, dropout):
    x, edges = cora
    torch.manual_seed(0)
    plain = GATConv(x.size(1), 8, n_head=8)
    dropped = GATConv(x.size(1), 8, n_head=8, **{dropout: 0.6})
    dropped.load_state_dict(plain.state_dict())
    plain.eval(), dropped.eval()
    with torch.no_grad():
        torch.testing.assert_close(dropped(x, edges), plain(x, edges), rtol=0, atol=0)
        plain.train(), dropped.train()
        assert not torch.allclose(dropped(x, edges), plain(x, edges))


def test_gat_input_dropout_draws_a_mask_per_head():
    torch.manual_seed(0)
    gat = GATConv(4, 1, n_head=64, input_dropout=0.5)
    with torch.no_grad():
        gat.lin.weight.fill_(1.0)  # every head sums its 4 inputs: W x_j shows which inputs its mask kept
    ones = torch.ones(3000, 4)
    projected = gat.project(ones)[..., 0]  # (N, H): 2 x (kept inputs) per node and head
    assert set(projected.unique().tolist()) <= {0.0, 2.0, 4.0, 6.0, 8.0}
    assert projected.mean().item() == pytest.approx(4.0, abs=0.05)  # the expectation is kept
    assert (projected[:, 0] != projected[:, 1]).float().mean() > 0.5  # two heads, two masks
    gat.eval()
    torch.testing.assert_close(gat.project(ones)[..., 0], torch.full((3000, 64), 4.0), rtol=0, atol=0)


def test_gat_input_dropout_on_sparse_features_projects_as_the_dense_product(cora):
    """With a rate too small to drop anything, the per-head path (over x's non-zeros) gives W x and
    its weight gradient, on Cora's 1.3 %-dense bag-of-words rows."""
    x, edges = cora
    torch.manual_seed(0)
    plain = GATConv(x.size(1), 8, n_head=8)
    per_head = GATConv(x.size(1), 8, n_head=8, input_dropout=1e-12)
    per_head.load_state_dict(plain.state_dict())
    for layer in (plain, per_head):
        layer(x, edges).square().sum().backward()
    torch.testing.assert_close(per_head.project(x), plain.project(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(per_head.lin.weight.grad, plain.lin.weight.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("concat", [True, False])
def test_gat_matches_pyg_on_cora(cora, concat):
    x, edges = cora
    theirs = PygGAT(x.size(1), 8, heads=8, concat=concat, dropout=0.6)
    ours = GATConv(x.size(1), 8, n_head=8, concat=concat, dropout=0.6)
    copy_linear(ours.lin, theirs.lin)
    with torch.no_grad():
        ours.att_src.copy_(theirs.att_src.view(8, 8))
        ours.att_dst.copy_(theirs.att_dst.view(8, 8))
        ours.bias.copy_(torch.randn_like(ours.bias))
        theirs.bias.copy_(ours.bias)
        ours.eval(), theirs.eval()
        torch.testing.assert_close(ours(x, edges), theirs(x, edges), rtol=0, atol=1e-5)


@pytest.mark.parametrize("concat", [True, False])
def test_edge_attention_matches_pyg_transformer_conv_on_cora(cora, concat):
    x, edges = cora
    theirs = PygTransformer(x.size(1), 8, heads=4, concat=concat, root_weight=True)
    ours = EdgeAttention(x.size(1), 8, n_head=4, concat=concat, skip=True)
    for mine, pyg in [(ours.q_proj, theirs.lin_query), (ours.k_proj, theirs.lin_key), (ours.v_proj, theirs.lin_value),
                      (ours.skip_proj, theirs.lin_skip)]:
        copy_linear(mine, pyg)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, edges), theirs(x, edges), rtol=0, atol=1e-5)


def test_edge_attention_on_the_complete_graph_is_multi_head_attention():
    torch.manual_seed(0)
    n, d, heads = 11, 32, 4
    mha = MultiHeadAttention(d, heads, backend="math").eval()
    ours = EdgeAttention(d, d // heads, n_head=heads, out_features=d).eval()
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        copy_linear(getattr(ours, name), getattr(mha, name))
    x = torch.randn(n, d)
    with torch.no_grad():
        expected = mha(x[None])[0]  # (N, C): the N nodes are one sequence
        torch.testing.assert_close(ours(x, complete_graph(n)), expected, rtol=0, atol=1e-6)
        wrong = ours(x, complete_graph(n)[:, 1:])  # one edge fewer is no longer the same attention
    assert (wrong - expected).abs().max() > 1e-4


def layers(width=12):
    return [GCNConv(width, 6), GATConv(width, 3, n_head=2), EdgeAttention(width, 3, n_head=2, skip=True, out_features=5)]


@pytest.mark.parametrize("layer", layers(), ids=lambda layer: type(layer).__name__)
def test_relabelling_nodes_permutes_the_output(layer):
    torch.manual_seed(0)
    n = 30
    x, edges = torch.randn(n, 12), torch.randint(n, (2, 90))
    perm = torch.randperm(n)  # node i is called inverse[i] after relabelling; new node k is old perm[k]
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(n)
    with torch.no_grad():
        out = layer.eval()(x, edges)
        relabelled = layer(x[perm], inverse[edges])
    torch.testing.assert_close(relabelled, out[perm], rtol=0, atol=1e-6)


@pytest.mark.parametrize("layer", layers(), ids=lambda layer: type(layer).__name__)
def test_isolated_nodes_and_edgeless_graphs_give_finite_outputs(layer):
    torch.manual_seed(0)
    x = torch.randn(5, 12)
    some = torch.tensor([[0, 1], [1, 0]])  # nodes 2, 3, 4 are isolated
    none = torch.zeros(2, 0, dtype=torch.long)
    layer.eval()
    with torch.no_grad():
        for edges in (some, none):
            out = layer(x, edges)
            assert out.shape[0] == 5 and torch.isfinite(out).all()
    if isinstance(layer, EdgeAttention):  # no self-loops: an isolated node hears only its own skip projection
        torch.testing.assert_close(layer(x, none), layer.out_proj(layer.skip_proj(x)))
    x.requires_grad_(True)
    layer(x, none).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_segment_softmax_sums_to_one_per_target_and_skips_empty_ones():
    scores = torch.tensor([[1.0], [2.0], [1000.0], [-3.0]])
    target = torch.tensor([0, 0, 2, 2])
    weights = segment_softmax(scores, target, 4)
    sums = torch.zeros(4, 1).index_add_(0, target, weights)
    torch.testing.assert_close(sums, torch.tensor([[1.0], [0.0], [1.0], [0.0]]))


def test_positional_encodings_on_the_karate_club():
    graph = networkx.karate_club_graph()
    pairs = torch.tensor(list(graph.edges())).T
    edges = torch.cat([pairs, pairs.flip(0)], dim=1)
    n = graph.number_of_nodes()
    walk = random_walk_pe(edges, n, 3)
    degree = torch.tensor([graph.degree(i) for i in range(n)], dtype=torch.float32)
    assert torch.all(walk[:, 0] == 0)  # no self-loops: a one-step walk never returns
    neighbours_inverse = torch.tensor([sum(1 / graph.degree(j) for j in graph[i]) for i in range(n)])
    torch.testing.assert_close(walk[:, 1], neighbours_inverse / degree)  # P^2_ii = sum_j 1/(d_i d_j)
    pe = laplacian_pe(edges, n, 4)
    assert pe.shape == (n, 4)
    torch.testing.assert_close(pe.T @ pe, torch.eye(4), atol=1e-5, rtol=0)
    assert laplacian_pe(edges[:, :0], 3, 4).shape == (3, 4)


def test_feature_dropout_drops_with_probability_p_and_keeps_the_mean():
    torch.manual_seed(0)
    x = torch.ones(400, 500)
    dropped = feature_dropout(x, 0.6, training=True)
    assert abs((dropped == 0).float().mean().item() - 0.6) < 0.01
    assert abs(dropped.mean().item() - 1.0) < 0.02 and set(dropped.unique().tolist()) == {0.0, 2.5}
    assert feature_dropout(x, 0.6, training=False) is x
