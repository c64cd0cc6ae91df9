"""LSH attention: with one bucket (or one chunk) it is full shared-QK attention."""

import math

import pytest
import torch

from attnlab.layers import LocalSelfAttention, LSHSelfAttention, RotaryEmbedding, lsh_attention
from attnlab.layers.lsh_attention import (MASKED, SELF_MASKED, chunked_attention, full_shared_qk_attention,
                                         hash_buckets, look_around, look_around_self_index, self_index)


def dense_shared_qk(qk, v, causal):
    """Reference: every query sees every (earlier) key; keys RMS-normalised / sqrt(D); own
    position only when nothing else is visible."""
    t, d = qk.shape[-2:]
    keys = qk / torch.sqrt(qk.pow(2).mean(-1, keepdim=True) + 1e-6) / math.sqrt(d)
    scores = qk @ keys.transpose(-1, -2)
    if causal:
        scores = scores.masked_fill(torch.ones(t, t).triu(1).bool(), -1e9)
    scores = scores.masked_fill(torch.eye(t, dtype=torch.bool), -1e5)
    return scores.softmax(-1) @ v


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_hashes", [1, 2])
def test_one_bucket_with_full_lookback_equals_full_attention(causal, n_hashes):
    torch.manual_seed(0)
    qk, v = torch.randn(2, 3, 32, 8), torch.randn(2, 3, 32, 8)
    buckets = hash_buckets(qk, 1, n_hashes) + torch.arange(n_hashes).view(1, 1, -1, 1)
    # chunks of 8, looking back 3 chunks: every query sees every position exactly once
    out = lsh_attention(qk.transpose(1, 2), v.transpose(1, 2), buckets, chunk_length=8, chunks_before=3,
                        causal=causal).transpose(1, 2)
    expected = dense_shared_qk(qk, v, causal)
    torch.testing.assert_close(out[:, :, 1:], expected[:, :, 1:], atol=1e-5, rtol=1e-5)
    # A causal first token sees only itself, scored -1e5; merging rounds by exp(lse - logsumexp(lse))
    # (as the reference does) then carries float32 rounding of numbers near 1e5: ~1e-3 relative.
    torch.testing.assert_close(out[:, :, 0], expected[:, :, 0], atol=1e-5, rtol=1e-2)


@pytest.mark.parametrize("causal", [False, True])
def test_sequence_within_one_chunk_is_full_attention(causal):
    torch.manual_seed(1)
    layer = LSHSelfAttention(16, 2, n_buckets=4, n_hashes=2, chunk_length=16, causal=causal)
    x = torch.randn(2, 12, 16)
    qk = layer.qk_proj(x).view(2, 12, 2, 8).transpose(1, 2)
    v = layer.v_proj(x).view(2, 12, 2, 8).transpose(1, 2)
    expected = layer.out_proj(dense_shared_qk(qk, v, causal).transpose(1, 2).reshape(2, 12, 16))
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_rotary_lsh_with_one_bucket_is_full_attention_over_rotated_vectors(causal):
    """Rotary positions turn the shared vectors before hashing and before keys are made from them."""
    torch.manual_seed(2)
    rotary = RotaryEmbedding(8, 64)
    layer = LSHSelfAttention(16, 2, n_buckets=1, n_hashes=1, chunk_length=8, chunks_before=3, causal=causal,
                             rotary=rotary)
    x, positions = torch.randn(2, 32, 16), torch.arange(5, 37).expand(2, 32)
    qk = rotary(layer.qk_proj(x).view(2, 32, 2, 8).transpose(1, 2), positions)  # (B, H, T, D)
    v = layer.v_proj(x).view(2, 32, 2, 8).transpose(1, 2)
    expected = layer.out_proj(dense_shared_qk(qk, v, causal).transpose(1, 2).reshape(2, 32, 16))
    got = layer(x, position_ids=positions)
    torch.testing.assert_close(got[:, 1:], expected[:, 1:], atol=1e-5, rtol=1e-5)
    unrotated = layer.qk_proj(x).view(2, 32, 2, 8).transpose(1, 2)
    assert (dense_shared_qk(qk, v, causal) - dense_shared_qk(unrotated, v, causal)).abs().max() > 1e-3


def test_rotary_local_attention_depends_on_distances_only():
    torch.manual_seed(3)
    layer = LocalSelfAttention(16, 2, chunk_length=8, causal=True, rotary=RotaryEmbedding(8, 64))
    x, positions = torch.randn(2, 32, 16), torch.arange(32).expand(2, 32)
    plain = LocalSelfAttention(16, 2, chunk_length=8, causal=True)
    plain.load_state_dict(layer.state_dict())
    torch.testing.assert_close(layer(x, position_ids=positions + 7), layer(x, position_ids=positions),
                               atol=1e-5, rtol=1e-5)
    assert (layer(x, position_ids=positions) - plain(x)).abs().max() > 1e-3


def test_first_token_of_causal_attention_sees_only_itself():
    torch.manual_seed(2)
    qk, v = torch.randn(1, 2, 8, 4), torch.randn(1, 2, 8, 4)
    out = full_shared_qk_attention(qk.transpose(1, 2), v.transpose(1, 2), causal=True).transpose(1, 2)
    torch.testing.assert_close(out[:, :, 0], v[:, :, 0])
    assert not torch.allclose(out[:, :, 1], v[:, :, 1])  # later tokens do not attend to themselves


def test_hashed_attention_is_causal_and_seeded():
    torch.manual_seed(3)
    layer = LSHSelfAttention(16, 2, n_buckets=4, n_hashes=2, chunk_length=4, causal=True, hash_seed=7)
    x = torch.randn(1, 32, 16)
    out = layer(x)
    torch.testing.assert_close(layer(x), out)  # fixed seed: same hashing every call
    changed = x.clone()
    changed[:, 20:] += 1.0
    # the future cannot leak into the past (buckets may move, but only earlier keys count)
    out_changed = layer(changed)
    assert not torch.allclose(out_changed[:, 20:], out[:, 20:])
    hashed = hash_buckets(layer.qk_proj(x).view(1, 32, 2, 8).transpose(1, 2), 4, 2,
                          torch.Generator().manual_seed(7))
    assert hashed.shape == (1, 2, 2, 32) and hashed.min() >= 0 and hashed.max() < 4
    assert len(hashed.unique()) > 1


def test_padding_keys_are_never_attended():
    torch.manual_seed(4)
    layer = LSHSelfAttention(16, 2, n_buckets=4, n_hashes=1, chunk_length=4, hash_seed=3)
    x = torch.randn(1, 16, 16)
    mask = torch.ones(1, 16, dtype=torch.bool)
    mask[:, 12:] = False
    out = layer(x, key_mask=mask)
    noisy = x.clone()
    noisy[:, 12:] = torch.randn(1, 4, 16) * 10
    torch.testing.assert_close(layer(noisy, key_mask=mask)[:, :12], out[:, :12])


def test_length_not_a_multiple_of_the_chunk_is_refused():
    layer = LSHSelfAttention(16, 2, chunk_length=8)
    with pytest.raises(ValueError, match="multiple of chunk_length"):
        layer(torch.randn(1, 12, 16))


def reference_chunk_attention(q, k, v, hidden, is_self, q_pos, t):
    """The forward written as plain autograd ops: each slot's masked scores, one softmax over
    all slots of the same position, the slots' outputs summed into their position."""
    scores = q @ k.transpose(-1, -2)
    scores = torch.where(hidden, torch.tensor(MASKED, dtype=scores.dtype), scores)
    scores = torch.where(is_self, torch.tensor(SELF_MASKED, dtype=scores.dtype), scores)
    lse = scores.logsumexp(-1)  # (B, H, N, Lq)
    slot_of = torch.nn.functional.one_hot(q_pos, t).bool().expand(*lse.shape, t)  # which position a slot fills
    per_position = torch.where(slot_of, lse.unsqueeze(-1), -math.inf).logsumexp(dim=(2, 3))  # (B, H, t)
    total = torch.einsum("bht,bhnlt->bhnl", per_position, slot_of.to(q.dtype))
    out_slots = torch.exp(scores - total.unsqueeze(-1)) @ v
    return torch.einsum("bhnld,bhnlt->bthd", out_slots, slot_of.to(q.dtype))  # (B, t, H, D)


@pytest.mark.parametrize("causal", [False, True])
def test_chunk_attention_backward_matches_autograd(causal):
    """The hand-written backward against autograd, with every position in two slots (two
    rounds: positions 0..11 then a shuffle of them) and padded keys."""
    torch.manual_seed(5)
    q, k, v = (torch.randn(2, 3, 4, 6, 5, dtype=torch.float64, requires_grad=True) for _ in range(3))
    t = 12
    q_pos = torch.cat([torch.arange(t), torch.randperm(t)]).view(1, 1, 4, 6).expand(2, 3, 4, 6)
    k_pos = torch.cat([q_pos, q_pos.roll(1, dims=2)], dim=3)  # a look-back layout (B, H, N, 2L)
    key_mask = torch.rand(2, 1, 4, 12) > 0.2
    hidden = ~key_mask.unsqueeze(-2)
    if causal:
        hidden = hidden | (q_pos.unsqueeze(-1) < k_pos.unsqueeze(-2))
    is_self = q_pos.unsqueeze(-1) == k_pos.unsqueeze(-2)

    def wide(x):
        return torch.cat([x, x.roll(1, dims=2)], dim=3)

    weights = torch.randn(2, t, 3, 5, dtype=torch.float64)
    results = []
    self_at = self_index(q_pos, k_pos, (2, 3, 4))
    for attend in (lambda: chunked_attention(q, wide(k), wide(v), q_pos, k_pos, t, causal, key_mask, self_at=self_at),
                   lambda: reference_chunk_attention(q, wide(k), wide(v), hidden, is_self, q_pos, t)):
        out = attend()
        results.append([out, *torch.autograd.grad((out * weights).sum(), (q, k, v))])
    for ours, expected in zip(*results):
        torch.testing.assert_close(ours, expected, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("t,length,rounds,before,after", [(32, 8, 2, 1, 0), (32, 8, 3, 2, 1), (16, 8, 1, 2, 0),
                                                          (16, 8, 2, 1, 1)])
def test_look_around_self_index_finds_every_self_pair(t, length, rounds, before, after):
    """The shortcut (own diagonal + chunks next to another round or wrapping onto themselves)
    finds exactly the pairs a full comparison finds."""
    torch.manual_seed(6)
    buckets = torch.randint(0, 4, (2, 3, rounds, t)) + 4 * torch.arange(rounds).view(1, 1, -1, 1)
    pos = (buckets.flatten(2) * (rounds * t) + torch.arange(rounds * t)).argsort(dim=-1) % t
    q_pos = pos.view(2, 3, -1, length)
    k_pos = look_around(q_pos, before, after)
    fast = look_around_self_index(q_pos, k_pos, before, t // length)
    full = self_index(q_pos, k_pos, q_pos.shape[:3])
    assert sorted(set(fast.tolist())) == full.tolist()
    assert len(full) > q_pos.numel()  # some neighbouring chunks do repeat a position
