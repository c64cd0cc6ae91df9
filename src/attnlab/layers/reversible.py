"""Reversible residual layers (Gomez et al. 2017, used by the Reformer).

A block maps two streams (x1, x2) to
    y1 = x1 + f(x2)
    y2 = x2 + g(y1)
and can be run backwards: x2 = y2 - g(y1), x1 = y1 - f(x2). A stack of such blocks keeps
only its final outputs for the backward pass and recomputes each block's inputs from its
outputs there, so activation memory does not grow with depth. Random draws inside f and g
(dropout, random hash rotations) are replayed from the generator state saved in forward.
"""

import contextlib

import torch
from torch import nn


class RngState:
    """The CPU generator state (and the CUDA one of `device`) at creation; `replay()` runs a
    block of code from that state and leaves the global generators as they were."""

    def __init__(self, device):
        self.cuda_device = device if device.type == "cuda" else None
        self.cpu_state = torch.get_rng_state()
        self.cuda_state = torch.cuda.get_rng_state(device) if self.cuda_device is not None else None

    @contextlib.contextmanager
    def replay(self):
        devices = [self.cuda_device] if self.cuda_device is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu_state)
            if self.cuda_device is not None:
                torch.cuda.set_rng_state(self.cuda_state, self.cuda_device)
            yield


class ReversibleBlock(nn.Module):
    """y1 = x1 + f(x2), y2 = x2 + g(y1). Extra keyword arguments go to f (e.g. a mask)."""

    def __init__(self, f: nn.Module, g: nn.Module):
        super().__init__()
        self.f, self.g = f, g

    def forward(self, x1, x2, **f_kwargs):
        """The plain residual computation (autograd stores every activation)."""
        y1 = x1 + self.f(x2, **f_kwargs)
        return y1, x2 + self.g(y1)

    def forward_recording(self, x1, x2, f_kwargs):
        """Forward without a graph; -> (y1, y2, generator states for f and g)."""
        rng_f = RngState(x2.device)
        y1 = x1 + self.f(x2, **f_kwargs)
        rng_g = RngState(x2.device)
        return y1, x2 + self.g(y1), (rng_f, rng_g)

    def backward_pass(self, y1, y2, dy1, dy2, f_kwargs, rng):
        """Recompute the inputs from the outputs and backpropagate through f and g once.
        Parameter gradients accumulate into .grad; returns (x1, x2, dx1, dx2)."""
        rng_f, rng_g = rng
        with torch.enable_grad():
            y1 = y1.detach().requires_grad_()
            with rng_g.replay():
                g_y1 = self.g(y1)
            torch.autograd.backward(g_y1, dy2)
        with torch.no_grad():
            x2 = y2 - g_y1
            dy1 = dy1 + y1.grad
        with torch.enable_grad():
            x2 = x2.detach().requires_grad_()
            with rng_f.replay():
                f_x2 = self.f(x2, **f_kwargs)
            torch.autograd.backward(f_x2, dy1)
        with torch.no_grad():
            x1 = y1 - f_x2
            dx2 = dy2 + x2.grad
        return x1.detach(), x2.detach(), dy1, dx2


class _ReversibleStack(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x1, x2, blocks, f_kwargs):
        rngs = []
        for block in blocks:
            x1, x2, rng = block.forward_recording(x1, x2, f_kwargs)
            rngs.append(rng)
        ctx.blocks, ctx.f_kwargs, ctx.rngs = blocks, f_kwargs, rngs
        ctx.save_for_backward(x1, x2)
        return x1, x2

    @staticmethod
    def backward(ctx, dy1, dy2):
        y1, y2 = ctx.saved_tensors
        for block, rng in zip(reversed(ctx.blocks), reversed(ctx.rngs)):
            y1, y2, dy1, dy2 = block.backward_pass(y1, y2, dy1, dy2, ctx.f_kwargs, rng)
        return dy1, dy2, None, None


class ReversibleSequence(nn.Module):
    """A stack of ReversibleBlocks. With gradients enabled the whole stack runs as one
    autograd function that keeps only the final (y1, y2); `reversible=False` runs the plain
    residual blocks instead (for checking, or when memory is no concern)."""

    def __init__(self, blocks, reversible=True):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.reversible = reversible

    def forward(self, x1, x2, **f_kwargs):
        if not self.reversible or not torch.is_grad_enabled():
            for block in self.blocks:
                x1, x2 = block(x1, x2, **f_kwargs)
            return x1, x2
        if not (x1.requires_grad or x2.requires_grad):  # parameters still need the backward pass to run
            x2 = x2.detach().requires_grad_()
        return _ReversibleStack.apply(x1, x2, list(self.blocks), f_kwargs)
