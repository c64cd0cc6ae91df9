"""Reversible residual stacks: same gradients as the plain stack, memory flat in depth."""

import pytest
import torch
from torch import nn

from attnlab.layers import ChunkedFeedForward, FeedForward, LSHSelfAttention, ReversibleBlock, ReversibleSequence


class PreNorm(nn.Module):
    def __init__(self, d, fn):
        super().__init__()
        self.norm, self.fn = nn.LayerNorm(d), fn

    def forward(self, x, **kwargs):
        return self.fn(self.norm(x), **kwargs)


def make_stack(depth, d=16, dropout=0.1):
    blocks = []
    for _ in range(depth):
        # no hash seed and dropout on: the recomputation must replay the same random draws
        attn = LSHSelfAttention(d, 2, n_buckets=4, n_hashes=2, chunk_length=4, causal=True, dropout=dropout)
        ffn = ChunkedFeedForward(nn.LayerNorm(d), FeedForward(d, 32, "relu", dropout=dropout), chunk_size=5,
                                 dropout=dropout)
        blocks.append(ReversibleBlock(PreNorm(d, attn), ffn))
    return ReversibleSequence(blocks)


def grads_of(stack, x, mask, reversible):
    stack.reversible = reversible
    stack.zero_grad()
    x = x.clone().requires_grad_()
    torch.manual_seed(123)
    y1, y2 = stack(x, x, key_mask=mask)
    (y1.pow(2).sum() + (y2 * torch.linspace(-1, 1, y2.size(-1))).sum()).backward()
    return [y1.detach(), y2.detach(), x.grad] + [p.grad.clone() for p in stack.parameters()]


@pytest.mark.parametrize("with_mask", [False, True])
def test_reversible_gradients_equal_plain_backprop(with_mask):
    torch.manual_seed(0)
    stack = make_stack(3).train()
    x = torch.randn(2, 16, 16)
    mask = torch.ones(2, 16, dtype=torch.bool)
    if with_mask:
        mask[1, 13:] = False
    plain = grads_of(stack, x, mask, reversible=False)
    reversible = grads_of(stack, x, mask, reversible=True)
    assert len(plain) == len(reversible) > 3
    for a, b in zip(plain, reversible):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_rng_is_not_disturbed_by_recomputation():
    torch.manual_seed(0)
    stack = make_stack(2).train()
    x = torch.randn(1, 8, 16, requires_grad=True)
    torch.manual_seed(5)
    y1, y2 = stack(x, x)
    (y1.sum() + y2.sum()).backward()
    after_backward = torch.rand(3)
    torch.manual_seed(5)
    stack(x, x)
    torch.testing.assert_close(torch.rand(3), after_backward)


def saved_bytes(stack, x):
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        stack(x, x)
    return total


def test_activation_memory_does_not_grow_with_depth():
    torch.manual_seed(0)
    x = torch.randn(1, 32, 16, requires_grad=True)
    shallow, deep = make_stack(2, dropout=0.0), make_stack(8, dropout=0.0)
    assert saved_bytes(shallow, x) == saved_bytes(deep, x)
    deep.reversible = False
    assert saved_bytes(deep, x) > 4 * saved_bytes(shallow, x)  # the plain stack keeps every activation
