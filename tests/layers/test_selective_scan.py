"""The scans of the selective SSM (fused, chunked, associative) agree with the plain sequential
reference in values and gradients (float64), and the layer's one-token step equals its full forward."""

import pytest
import torch

from attnlab.layers.selective_scan import SCAN_FUNCTIONS, SelectiveSSM, scan_chunked, scan_sequential


def scan_inputs(length, seed=0, b=2, d=3, n=4):
    g = torch.Generator().manual_seed(seed)
    delta = torch.rand(b, length, d, generator=g, dtype=torch.float64) * 0.5
    A = -torch.rand(d, n, generator=g, dtype=torch.float64) * 4
    x = torch.randn(b, length, d, generator=g, dtype=torch.float64)
    B = torch.randn(b, length, n, generator=g, dtype=torch.float64)
    C = torch.randn(b, length, n, generator=g, dtype=torch.float64)
    h0 = torch.randn(b, d, n, generator=g, dtype=torch.float64)
    return [t.requires_grad_() for t in (x, delta, A, B, C, h0)]


def outputs_and_grads(scan, *inputs):
    """-> (y, h_T), and the gradients of every input from a loss that weighs each output differently."""
    y, last = scan(*inputs)
    loss = sum((out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum() for out in (y, last))
    return (y, last), torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize("length", [1, 2, 7, 16, 33])
@pytest.mark.parametrize("name", ["fused", "chunked", "associative"])
def test_scans_equal_the_sequential_reference_in_values_and_gradients(name, length):
    inputs = scan_inputs(length)
    expected, expected_grads = outputs_and_grads(SCAN_FUNCTIONS["sequential"], *inputs)
    got, got_grads = outputs_and_grads(SCAN_FUNCTIONS[name], *inputs)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    for g, e in zip(got_grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def test_the_fused_scan_s_written_backward_passes_gradcheck():
    assert torch.autograd.gradcheck(SCAN_FUNCTIONS["fused"], scan_inputs(5, seed=3))


def test_the_plain_reference_is_the_recurrence_as_written():
    decay, inputs, h0 = torch.rand(1, 3, 2, 2), torch.randn(1, 3, 2, 2), torch.randn(1, 2, 2)
    h1 = decay[:, 0] * h0 + inputs[:, 0]
    h2 = decay[:, 1] * h1 + inputs[:, 1]
    torch.testing.assert_close(scan_sequential(decay, inputs, h0)[:, :2], torch.stack([h1, h2], 1))


@pytest.mark.parametrize("chunk", [1, 3, 5, 40])
def test_the_chunked_scan_holds_for_any_chunk_size(chunk):
    decay, inputs, h0 = torch.rand(1, 23, 2, 3), torch.randn(1, 23, 2, 3), torch.randn(1, 2, 3)
    torch.testing.assert_close(scan_chunked(decay, inputs, h0, chunk), scan_sequential(decay, inputs, h0))


def test_a_long_strongly_decaying_sequence_stays_finite_in_float32():
    """exp(delta A) products underflow to 0 (never overflow): the chunked correction stays finite."""
    decay = torch.full((1, 4096, 2, 2), 0.5)
    inputs = torch.ones(1, 4096, 2, 2)
    states = scan_chunked(decay, inputs, torch.zeros(1, 2, 2))
    torch.testing.assert_close(states[:, -1], torch.full((1, 2, 2), 2.0))


@pytest.mark.parametrize("scan", sorted(SCAN_FUNCTIONS))
def test_the_layer_step_by_step_equals_its_forward(scan):
    torch.manual_seed(0)
    layer = SelectiveSSM(8, d_state=4, d_conv=3, dt_rank=2, scan=scan).double()
    x = torch.randn(2, 11, 8, dtype=torch.float64)
    with torch.no_grad():
        full, conv, ssm = layer(x)
        conv_t, ssm_t, outs = None, None, []
        for t in range(11):
            out, conv_t, ssm_t = layer(x[:, t:t + 1], conv_state=conv_t, ssm_state=ssm_t)
            outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ssm_t, ssm, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(conv_t, conv)


def test_the_ablation_ignores_the_input_when_choosing_delta_b_c():
    torch.manual_seed(0)
    layer = SelectiveSSM(8, d_state=4, selective=False)
    u = torch.randn(2, 5, 16)
    delta, B, C = layer._selection(u)
    assert torch.equal(delta, delta[:1, :1].expand_as(delta)) and torch.equal(B, B[:1, :1].expand_as(B))
    selective = SelectiveSSM(8, d_state=4)
    delta, B, _ = selective._selection(u)
    assert not torch.equal(B[0, 0], B[0, 1])
