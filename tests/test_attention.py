import pytest
import torch

from attnlab.layers import MultiHeadAttention, causal_mask, padding_mask, scaled_dot_product_attention


def qkv(b=2, h=4, tq=7, tk=7, d=16, h_kv=None):
    q = torch.randn(b, h, tq, d)
    k = torch.randn(b, h_kv or h, tk, d)
    v = torch.randn(b, h_kv or h, tk, d)
    return q, k, v


def both_paths(*args, **kwargs):
    out_math, weights = scaled_dot_product_attention(*args, backend="math", return_weights=True, **kwargs)
    out_sdpa, _ = scaled_dot_product_attention(*args, backend="sdpa", **kwargs)
    return out_math, out_sdpa, weights


@pytest.mark.parametrize("case", ["plain", "causal", "padding", "arbitrary", "bias", "gqa", "cache_shape"])
def test_math_and_sdpa_paths_agree(case):
    tk = 11 if case == "cache_shape" else 7
    q, k, v = qkv(tk=tk, h_kv=2 if case == "gqa" else None)
    kwargs = {}
    if case in ("causal", "cache_shape", "gqa"):
        kwargs["causal"] = True
    if case == "padding":
        kwargs["mask"] = padding_mask(torch.tensor([[1] * 7, [0, 0, 1, 1, 1, 1, 1]]))
    if case == "arbitrary":
        kwargs["mask"] = torch.rand(2, 1, 7, 7) > 0.3
    if case == "bias":
        kwargs["bias"] = torch.randn(1, 4, 7, 7)
        kwargs["causal"] = True
    out_math, out_sdpa, weights = both_paths(q, k, v, **kwargs)
    assert torch.allclose(out_math, out_sdpa, atol=1e-6), (out_math - out_sdpa).abs().max()
    assert torch.allclose(weights.sum(-1), torch.ones(()), atol=1e-6)


def test_causal_mask_aligns_last_query_with_last_key():
    mask = causal_mask(2, 5)
    assert mask.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]


def test_causal_attention_ignores_future_keys():
    q, k, v = qkv()
    out, _ = scaled_dot_product_attention(q, k, v, causal=True)
    v2 = v.clone()
    v2[:, :, 4:] += 100.0  # change only the future of query 3
    out2, _ = scaled_dot_product_attention(q, k, v2, causal=True)
    assert torch.allclose(out[:, :, :4], out2[:, :, :4], atol=1e-6)
    assert not torch.allclose(out[:, :, 4:], out2[:, :, 4:])


@pytest.mark.parametrize("backend", ["math", "sdpa"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_fully_masked_rows_give_zeros_and_finite_gradients(backend, with_bias):
    q, k, v = qkv()
    for t in (q, k, v):
        t.requires_grad_(True)
    mask = torch.ones(2, 1, 7, 7, dtype=torch.bool)
    mask[0, :, 2] = False  # query 2 of the first sequence sees nothing
    mask[1] = False  # the whole second sequence sees nothing
    bias = torch.randn(1, q.size(1), 7, 7) if with_bias else None
    out, _ = scaled_dot_product_attention(q, k, v, mask=mask, bias=bias, backend=backend)
    assert not out.isnan().any()
    assert out[0, :, 2].abs().max() == 0 and out[1].abs().max() == 0
    assert out[0, :, 3].abs().max() > 0
    out.sum().backward()
    assert all(t.grad.isfinite().all() for t in (q, k, v))
    assert q.grad[1].abs().max() == 0


def test_padded_keys_have_no_influence():
    q, k, v = qkv(b=1)
    mask = padding_mask(torch.tensor([[1, 1, 1, 1, 1, 0, 0]]))
    out, _ = scaled_dot_product_attention(q, k, v, mask=mask)
    ref, _ = scaled_dot_product_attention(q, k[:, :, :5], v[:, :, :5])
    assert torch.allclose(out, ref, atol=1e-6)


def test_multi_head_cross_attention_shapes_and_backends_agree():
    attn = MultiHeadAttention(32, 4, kv_dim=24)
    x, memory = torch.randn(2, 5, 32), torch.randn(2, 9, 24)
    out, weights = attn(x, kv_input=memory, return_weights=True)
    assert out.shape == (2, 5, 32) and weights.shape == (2, 4, 5, 9)
    attn.backend = "math"
    assert torch.allclose(attn(x, kv_input=memory), out, atol=1e-6)


@pytest.mark.parametrize("query_len", [1, 3])
def test_cross_attention_shares_a_memory_row_among_consecutive_query_rows(query_len):
    """Beam search passes each source's memory once for its K beams: the result must equal
    attending over a memory repeated K times."""
    torch.manual_seed(0)
    attention = MultiHeadAttention(32, 4).eval()
    sources, beams = 2, 3
    x = torch.randn(sources * beams, query_len, 32)
    memory = torch.randn(sources, 5, 32)
    mask = padding_mask(torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]))
    shared, shared_weights = attention(x, kv_input=memory, mask=mask, return_weights=True)
    repeated, repeated_weights = attention(x, kv_input=memory.repeat_interleave(beams, 0),
                                           mask=mask.repeat_interleave(beams, 0), return_weights=True)
    torch.testing.assert_close(shared, repeated, atol=1e-6, rtol=0)
    torch.testing.assert_close(shared_weights, repeated_weights, atol=1e-6, rtol=0)
    torch.testing.assert_close(attention(x, kv_input=memory, mask=mask), repeated, atol=1e-6, rtol=0)  # SDPA path


@pytest.mark.parametrize("masked", [False, True])
def test_bf16_attention_on_a_cpu_runs_the_float32_kernel_and_returns_bf16(masked):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 6, 32, generator=g).to(torch.bfloat16) for _ in range(3))
    mask = torch.rand(2, 1, 6, 6, generator=g) > 0.3 if masked else None
    with torch.autocast("cpu", dtype=torch.bfloat16):  # which casts SDPA's inputs to bf16 unless told not to
        out, _ = scaled_dot_product_attention(q, k, v, mask=mask, causal=not masked)
    expected, _ = scaled_dot_product_attention(q.float(), k.float(), v.float(), mask=mask, causal=not masked)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, expected.to(torch.bfloat16))
