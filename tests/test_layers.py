import math

import pytest
import torch

from attnlab.layers import FeedForward, RMSNorm, RotaryEmbedding, TransformerBlock, VocabProjection, sinusoidal_table


def test_sinusoidal_table_matches_the_paper_formula():
    table = sinusoidal_table(50, 16)
    pos, i = 7, 3
    assert math.isclose(table[pos, 2 * i], math.sin(pos / 10000 ** (2 * i / 16)), abs_tol=1e-6)
    assert math.isclose(table[pos, 2 * i + 1], math.cos(pos / 10000 ** (2 * i / 16)), abs_tol=1e-6)
    halves = sinusoidal_table(50, 16, interleaved=False)
    assert torch.allclose(halves[:, :8], table[:, 0::2]) and torch.allclose(halves[:, 8:], table[:, 1::2])


def test_rotary_scores_depend_only_on_relative_position():
    rope = RotaryEmbedding(8, 64)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(pq, pk):
        return (rope(q, torch.tensor([[pq]])) * rope(k, torch.tensor([[pk]]))).sum().item()

    assert math.isclose(score(5, 2), score(20, 17), rel_tol=1e-5, abs_tol=1e-5)
    assert not math.isclose(score(5, 2), score(5, 4), rel_tol=1e-3)
    assert torch.allclose(rope(q, torch.tensor([[0]])), q)


def test_rms_norm_matches_its_definition():
    norm = RMSNorm(6, eps=1e-6)
    norm.weight.data = torch.arange(1.0, 7.0)
    x = torch.randn(3, 6)
    expected = x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    assert torch.allclose(norm(x), expected, atol=1e-6)


@pytest.mark.parametrize("kind", ["relu", "gelu", "gelu_tanh", "swiglu", "geglu"])
def test_feedforward_kinds(kind):
    ffn = FeedForward(8, 32, kind)
    assert ffn(torch.randn(2, 3, 8)).shape == (2, 3, 8)
    assert (ffn.gate is not None) == (kind in ("swiglu", "geglu"))


def test_unknown_activation_is_rejected():
    with pytest.raises(ValueError, match="unknown feed-forward activation"):
        FeedForward(8, 32, "tanh")


def test_post_ln_block_output_is_normalised_and_pre_ln_is_not():
    x = torch.randn(2, 5, 16) * 10
    post = TransformerBlock(16, 4, 32, prenorm=False)
    out = post(x)
    assert torch.allclose(out.mean(-1), torch.zeros(2, 5), atol=1e-5)
    assert torch.allclose(out.std(-1, unbiased=False), torch.ones(2, 5), atol=1e-3)
    pre = TransformerBlock(16, 4, 32, prenorm=True)
    assert pre(x).std(-1).mean() > 3  # the residual stream keeps its scale


def test_cross_attention_block_reads_memory():
    block = TransformerBlock(16, 4, 32, cross_attention=True, prenorm=False).eval()
    x, memory = torch.randn(1, 4, 16), torch.randn(1, 6, 16)
    assert not torch.allclose(block(x, memory=memory), block(x, memory=memory + 1))


def test_vocab_projection_decoding_path_gives_the_linear_logits():
    projection = VocabProjection(16, 50)
    x = torch.randn(3, 2, 16)
    expected = torch.nn.functional.linear(x, projection.weight, projection.bias)
    with torch.no_grad():
        decoded = projection(x)
    assert decoded.shape == (3, 2, 50) and decoded.is_contiguous()
    assert torch.allclose(decoded, expected, atol=1e-5)
    assert torch.allclose(projection(x), expected, atol=1e-6)  # with autograd: nn.Linear's path
