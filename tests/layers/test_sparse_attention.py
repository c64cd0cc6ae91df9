"""Sparse attention equals dense attention with the equivalent mask (values and gradients)."""

import pytest
import torch

from attnlab.layers import TransformerBlock
from attnlab.layers.attention import scaled_dot_product_attention
from attnlab.layers import KVCache
from attnlab.layers.sparse_attention import (QUERY_CHUNK, BigBirdAttention, SlidingWindowAttention, bigbird_attention,
                                             bigbird_mask, bigbird_random_blocks, block_attention, global_indices,
                                             global_query_attention, scatter_rows, sliding_window_attention,
                                             sliding_window_mask)


def qkv(b=2, h=4, t=37, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, t, d, generator=g, requires_grad=True) for _ in range(3)]


def dense(q, k, v, mask):
    return scaled_dot_product_attention(q, k, v, mask=mask, backend="math")[0]


def sparse_with_global_rows(q, k, v, window, **kw):
    out = sliding_window_attention(q, k, v, window, **kw)
    gm, km = kw.get("global_mask"), kw.get("key_mask")
    if gm is not None:
        idx, valid = global_indices(gm & km if km is not None else gm)
        qg = q.gather(2, idx[:, None, :, None].expand(-1, q.size(1), -1, q.size(-1)))
        rows = global_query_attention(qg, k, v, idx, valid, causal=kw.get("causal", False), key_mask=km)
        out = scatter_rows(out, rows, idx, valid)
    return out


def assert_same_with_grads(out, ref, inputs):
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    g_out = torch.autograd.grad(out.square().sum(), inputs)
    g_ref = torch.autograd.grad(ref.square().sum(), inputs)
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["sdpa", "math"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window,dilation", [(4, 1), (5, 2), (3, [1, 2, 3, 1])])
def test_sliding_window_equals_dense_band(causal, window, dilation, backend):
    q, k, v = qkv()
    out = sliding_window_attention(q, k, v, window, dilation=dilation, causal=causal, backend=backend)
    if isinstance(dilation, list):  # per-head dilation: compare head by head
        ref = torch.cat([dense(q[:, i:i + 1], k[:, i:i + 1], v[:, i:i + 1],
                               sliding_window_mask(37, window, dilation=d, causal=causal))
                         for i, d in enumerate(dilation)], dim=1)
    else:
        ref = dense(q, k, v, sliding_window_mask(37, window, dilation=dilation, causal=causal))
    assert_same_with_grads(out, ref, (q, k, v))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dilation", [1, [1, 2, 1, 3]])
def test_sliding_window_with_global_tokens_and_padding(causal, dilation):
    q, k, v = qkv(t=30)
    key_mask = torch.ones(2, 30, dtype=torch.bool)
    key_mask[1, 24:] = False  # second row padded
    global_mask = torch.zeros(2, 30, dtype=torch.bool)
    global_mask[0, [0, 13]] = True
    global_mask[1, [2, 7, 20]] = True  # rows hold different numbers of global tokens
    kw = dict(causal=causal, key_mask=key_mask, global_mask=global_mask)
    out = sparse_with_global_rows(q, k, v, 3, dilation=dilation, **kw)
    if isinstance(dilation, list):
        ref = torch.cat([dense(q[:, i:i + 1], k[:, i:i + 1], v[:, i:i + 1],
                               sliding_window_mask(30, 3, dilation=d, **kw)) for i, d in enumerate(dilation)], dim=1)
    else:
        ref = dense(q, k, v, sliding_window_mask(30, 3, **kw))
    ref = ref * key_mask[:, None, :, None]  # padding queries: zeros on both sides
    out = out * key_mask[:, None, :, None]
    assert_same_with_grads(out, ref, (q, k, v))


@pytest.mark.parametrize("backend", ["sdpa", "math"])
@pytest.mark.parametrize("causal", [False, True])
def test_sliding_window_wider_than_a_query_chunk(causal, backend):
    """window > QUERY_CHUNK: chunks of QUERY_CHUNK queries, the reach rounded up to whole chunks,
    spans that cross head boundaries in the shared row layout (masked), padding and globals."""
    window, t = QUERY_CHUNK + 6, 3 * QUERY_CHUNK + 29
    q, k, v = qkv(b=2, h=2, t=t, d=4)
    key_mask = torch.ones(2, t, dtype=torch.bool)
    key_mask[1, t - 40:] = False
    global_mask = torch.zeros(2, t, dtype=torch.bool)
    global_mask[:, [5, t // 2]] = True
    kw = dict(causal=causal, key_mask=key_mask, global_mask=global_mask)
    out = sparse_with_global_rows(q, k, v, window, backend=backend, **kw) * key_mask[:, None, :, None]
    ref = dense(q, k, v, sliding_window_mask(t, window, **kw)) * key_mask[:, None, :, None]
    assert_same_with_grads(out, ref, (q, k, v))


def test_block_attention_matches_math_path_and_zeroes_rows_without_keys():
    q, k, v = (torch.randn(3, 2, 5, 4, requires_grad=True) for _ in range(3))
    mask = torch.rand(3, 1, 5, 5) > 0.4
    mask[0, 0, 2] = False  # a query that sees no key
    out = block_attention(q, k, v, mask)
    ref = block_attention(q, k, v, mask, backend="math")
    assert out[0, :, 2].abs().max() == 0
    assert_same_with_grads(out, ref, (q, k, v))


def test_hand_written_backwards_with_dropout_pass_gradcheck():
    """float64 gradcheck, the dropout mask fixed by reseeding before every call."""
    q, k, v = (torch.randn(1, 2, 11, 3, dtype=torch.float64, requires_grad=True) for _ in range(3))
    global_mask = torch.zeros(1, 11, dtype=torch.bool)
    global_mask[0, 4] = True

    def band(q, k, v, dropout_p=0.3):
        torch.manual_seed(0)
        return sliding_window_attention(q, k, v, 2, global_mask=global_mask, dropout_p=dropout_p)

    def blocks(q, k, v, dropout_p=0.3):
        torch.manual_seed(0)
        return block_attention(q, k, v, torch.ones(11, 11, dtype=torch.bool).tril(), dropout_p=dropout_p)

    for fn in (band, blocks):
        assert not torch.allclose(fn(q, k, v), fn(q, k, v, dropout_p=0.0))  # something was dropped
        assert torch.autograd.gradcheck(fn, (q, k, v))


def test_sliding_window_module_matches_dense_and_kv_cache():
    torch.manual_seed(0)
    attn = SlidingWindowAttention(16, 2, window=3, causal=True).eval()
    x = torch.randn(1, 11, 16)
    full = attn(x)
    q, k, v = (attn._heads(p(x), 2) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    ref = attn._merge(dense(q, k, v, sliding_window_mask(11, 3, causal=True)))
    torch.testing.assert_close(full, ref, atol=1e-5, rtol=1e-5)
    cache = KVCache(1)
    steps = [attn(x[:, :6], cache=cache)] + [attn(x[:, i:i + 1], cache=cache) for i in range(6, 11)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_sliding_window_module_in_a_block_uses_global_projections():
    torch.manual_seed(0)
    attn = SlidingWindowAttention(16, 2, window=2, global_projections=True)
    block = TransformerBlock(16, 2, 32, self_attention=attn).eval()
    x = torch.randn(1, 12, 16)
    g = torch.zeros(1, 12, dtype=torch.bool)
    g[0, 0] = True
    base = block(x, global_mask=g)
    with torch.no_grad():
        attn.q_global.weight.mul_(3.0)  # only the global token's row may change
    changed = (block(x, global_mask=g) - base).abs().amax(-1)[0]
    assert changed[0] > 1e-3 and changed[1:].max() == 0


@pytest.mark.parametrize("backend", ["sdpa", "math"])
@pytest.mark.parametrize("n_random", [0, 2])
def test_bigbird_equals_dense_block_mask(n_random, backend):
    q, k, v = qkv(t=8 * 4, h=3)
    rand = bigbird_random_blocks(8, n_random, 3, seed=7)
    key_mask = torch.ones(2, 32, dtype=torch.bool)
    key_mask[1, 27:] = False
    out = bigbird_attention(q, k, v, 4, rand, key_mask=key_mask, backend=backend)
    ref = dense(q, k, v, bigbird_mask(32, 4, rand, key_mask))
    assert_same_with_grads(out, ref, (q, k, v))


def test_bigbird_random_blocks_are_seeded_and_avoid_window_and_globals():
    a, b = bigbird_random_blocks(12, 3, 4, seed=1), bigbird_random_blocks(12, 3, 4, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, bigbird_random_blocks(12, 3, 4, seed=2))
    rows = torch.arange(1, 11)[None, :, None]
    assert ((a - rows).abs() > 1).all() and (a > 0).all() and (a < 11).all()
    assert all(len(set(r.tolist())) == 3 for r in a.view(-1, 3))  # distinct within a row
    with pytest.raises(ValueError, match="at least"):
        bigbird_random_blocks(6, 2, 1, seed=0)


def test_modules_refuse_what_their_pattern_cannot_do():
    x = torch.randn(1, 40, 16)
    with pytest.raises(ValueError, match="bidirectional"):
        BigBirdAttention(16, 2, block_size=4, n_random=1)(x, causal=True)
    with pytest.raises(ValueError, match="bias"):
        SlidingWindowAttention(16, 2, window=4)(x, bias=torch.zeros(1, 2, 40, 40))
