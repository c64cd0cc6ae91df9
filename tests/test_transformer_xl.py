"""Transformer-XL: relative attention against a direct formula, recurrence against one pass
with the matching band mask, and memory kept out of the gradient."""

import pytest
import torch

from attnlab.errors import UserError
from attnlab.layers.positions import sinusoidal_table
from attnlab.layers.relative_attention import RelativeMultiHeadAttention, blocked_relative_attention, rel_shift
from attnlab.models import TransformerXL, TransformerXLConfig


def direct_relative_attention(attn, x, memory):
    """score(i, j) = (q_i + u) . k_j + (q_i + v) . W_r R[(i + M) - j], causal, written out
    with an explicit distance table instead of the relative shift."""
    b, t, c = x.shape
    m = 0 if memory is None else memory.size(1)
    context = x if memory is None else torch.cat([memory, x], dim=1)
    h, d = attn.n_head, attn.head_dim
    q = attn.q_proj(x).view(b, t, h, d).transpose(1, 2)
    k = attn.k_proj(context).view(b, m + t, h, d).transpose(1, 2)
    v = attn.v_proj(context).view(b, m + t, h, d).transpose(1, 2)
    distance = (torch.arange(t)[:, None] + m - torch.arange(m + t)[None, :]).clamp(min=0)  # (T, K)
    r = attn.r_proj(sinusoidal_table(m + t, c, interleaved=False)).view(m + t, h, d)  # by distance
    r_ij = r[distance]  # (T, K, H, D)
    content = torch.einsum("bhid,bhjd->bhij", q + attn.content_bias[:, None], k)
    position = torch.einsum("bhid,ijhd->bhij", q + attn.position_bias[:, None], r_ij)
    scores = (content + position) / d ** 0.5
    scores = scores.masked_fill(torch.arange(m + t)[None, :] > torch.arange(t)[:, None] + m, float("-inf"))
    out = scores.softmax(-1) @ v
    return attn.out_proj(out.transpose(1, 2).reshape(b, t, h * d))


@pytest.mark.parametrize("memory_len", [0, 5])
@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_relative_attention_equals_direct_formula(memory_len, backend):
    torch.manual_seed(0)
    attn = RelativeMultiHeadAttention(16, 2, backend=backend)
    with torch.no_grad():  # non-zero global biases, so both terms are exercised
        attn.content_bias.normal_()
        attn.position_bias.normal_()
    x = torch.randn(2, 7, 16)
    memory = torch.randn(2, memory_len, 16) if memory_len else None
    torch.testing.assert_close(attn(x, memory=memory), direct_relative_attention(attn, x, memory), atol=1e-5, rtol=1e-5)


def shifted_relative_attention(q_content, q_position, k, v, r, scale):
    """The explicit path: all T x K scores at once, the position term by the relative shift."""
    t, k_len = q_content.size(2), k.size(2)
    scores = (q_content @ k.transpose(-1, -2) + rel_shift(q_position @ r.transpose(-1, -2))) * scale
    visible = torch.ones(t, k_len, dtype=torch.bool).tril(k_len - t)
    return scores.masked_fill(~visible, float("-inf")).softmax(-1) @ v


@pytest.mark.parametrize("memory_len", [0, 6])
@pytest.mark.parametrize("block", [3, 4, 16])  # blocks that do and do not divide T, and one block
def test_blocked_relative_attention_equals_the_shifted_scores_with_gradients(memory_len, block):
    torch.manual_seed(0)
    b, h, t, d = 2, 3, 10, 4
    k_len = memory_len + t
    inputs = [torch.randn(*shape, dtype=torch.float64, requires_grad=True)
              for shape in [(b, h, t, d), (b, h, t, d), (b, h, k_len, d), (b, h, k_len, d), (h, k_len, d)]]
    blocked = blocked_relative_attention(*inputs, 0.5, block)
    shifted = shifted_relative_attention(*inputs, 0.5)
    torch.testing.assert_close(blocked, shifted)
    grad = torch.randn_like(blocked)
    for got, want in zip(torch.autograd.grad(blocked, inputs, grad), torch.autograd.grad(shifted, inputs, grad)):
        torch.testing.assert_close(got, want)


def tiny_model(**overrides):
    torch.manual_seed(0)
    values = dict(vocab_size=30, max_seq_len=48, segment_length=8, mem_len=8, n_layer=3, n_head=2, d_model=16)
    model = TransformerXL(TransformerXLConfig(**{**values, **overrides})).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.content_bias.normal_()
            block.attn.position_bias.normal_()
    return model


def test_empty_memory_is_relative_attention_over_the_segment():
    model = tiny_model()
    ids = torch.randint(0, 30, (2, 8))
    x = model.tok_emb(ids)
    h = x
    for block in model.blocks:  # each layer: relative attention with no memory, then the feed-forward
        a = block.norm_attn(h + direct_relative_attention(block.attn, h, None))
        h = block.norm_ffn(a + block.ffn(a))
    torch.testing.assert_close(model(ids).hidden_states, h, atol=1e-5, rtol=1e-5)


def band_mask(n, segment, mem_len):
    """Query p (in segment s) sees keys j with s*segment - mem_len <= j <= p."""
    p, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    return (j <= p) & (j >= (p // segment) * segment - mem_len)


@pytest.mark.parametrize("mem_len", [8, 4, 12])
@pytest.mark.parametrize("prenorm", [False, True])
def test_segments_with_memory_equal_one_pass_with_band_mask(mem_len, prenorm):
    model = tiny_model(mem_len=mem_len, prenorm=prenorm)
    ids = torch.randint(0, 30, (2, 32))
    with torch.no_grad():
        recurrent = model(ids).hidden_states  # 4 segments of 8, memory carried across
        one_pass, _ = model.run_segment(model.tok_emb(ids), None, band_mask(32, 8, mem_len))
    torch.testing.assert_close(recurrent, one_pass, atol=1e-5, rtol=1e-5)


def test_memory_across_calls_equals_one_call():
    model = tiny_model(mem_len=12)
    ids = torch.randint(0, 30, (1, 24))
    with torch.no_grad():
        whole = model(ids).logits
        first = model(ids[:, :8])
        rest = model(ids[:, 8:], memory=first.memory)
    torch.testing.assert_close(torch.cat([first.logits, rest.logits], dim=1), whole, atol=1e-5, rtol=1e-5)
    assert [m.shape for m in rest.memory] == [(1, 12, 16)] * 3


def test_no_gradient_flows_into_the_memory():
    model = tiny_model().train()
    ids = torch.cat([torch.full((1, 8), 1), torch.full((1, 8), 2)], dim=1)  # token 1 only in the first segment
    logits = model(ids).logits
    logits[:, 8:].sum().backward()
    grad = model.tok_emb.weight.grad
    assert grad[2].abs().sum() > 0
    # token 1's embedding reaches the second segment only through the detached memory... and
    # through the tied output layer, which sees every vocabulary row; untie to isolate it
    model = tiny_model(tie_weights=False).train()
    model(ids).logits[:, 8:].sum().backward()
    assert model.tok_emb.weight.grad[1].abs().sum() == 0
    assert model.tok_emb.weight.grad[2].abs().sum() > 0


def test_padding_keys_are_ignored():
    model = tiny_model()
    ids = torch.randint(1, 30, (1, 16))
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 4), torch.ones(1, 16)], dim=1).long()
    model.config.segment_length = 20  # one segment: compare the same attention windows
    with torch.no_grad():
        plain = model(ids).logits
        left_padded = model(padded, attention_mask=mask).logits[:, 4:]
    torch.testing.assert_close(left_padded, plain, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mem_len", [4, 12])
def test_an_all_ones_mask_changes_nothing_across_segments(mem_len):
    model = tiny_model(mem_len=mem_len)
    ids = torch.randint(1, 30, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(model(ids, attention_mask=torch.ones_like(ids)).logits, model(ids).logits,
                                   atol=1e-5, rtol=1e-5)


def test_bad_config_is_a_user_error():
    with pytest.raises(UserError, match="mem_len"):
        TransformerXLConfig(mem_len=-1)
    with pytest.raises(UserError, match="d_model"):
        TransformerXLConfig(d_model=30, n_head=4)


def test_blocked_path_trains_under_bf16_autocast_like_the_shifted_path(assert_trains_alike_under_bf16):
    """The blocked kernel's backward runs outside autocast: its inputs must already agree in dtype."""
    blocked, shifted = tiny_model(), tiny_model(attn_backend="math")
    assert_trains_alike_under_bf16(blocked, shifted, torch.randint(0, 30, (2, 24)))
