"""Positional encodings: sinusoidal (fixed), learned (absolute) and rotary (RoPE)."""

import math

import torch
from torch import nn


def sinusoidal_table(n_positions: int, dim: int, interleaved: bool = True) -> torch.Tensor:
    """(n_positions, dim) table of Vaswani et al.: sin at even and cos at odd channels.

    interleaved=False puts all sines in the first half and all cosines in the second
    (the layout of Marian / fairseq checkpoints).
    """
    position = torch.arange(n_positions, dtype=torch.float64).unsqueeze(1)  # (P, 1)
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    angles = position * inv_freq  # (P, dim/2)
    table = torch.zeros(n_positions, dim, dtype=torch.float64)
    if interleaved:
        table[:, 0::2], table[:, 1::2] = angles.sin(), angles.cos()
    else:
        half = angles.size(1)
        table[:, :half], table[:, half:2 * half] = angles.sin(), angles.cos()
    return table.float()


class SinusoidalPositions(nn.Module):
    """Fixed encodings, looked up by position id: (B, T) or (T,) -> (..., dim)."""

    def __init__(self, n_positions: int, dim: int, interleaved: bool = True):
        super().__init__()
        self.register_buffer("table", sinusoidal_table(n_positions, dim, interleaved), persistent=False)

    def forward(self, position_ids):
        return self.table[position_ids]


class LearnedPositions(nn.Embedding):
    """Absolute positions as a trained embedding table, indexed by position id."""

    def __init__(self, n_positions: int, dim: int):
        super().__init__(n_positions, dim)


class RotaryEmbedding(nn.Module):
    """RoPE (Su et al.) in the rotate-half layout: channel i pairs with channel i + D/2."""

    def __init__(self, head_dim: int, n_positions: int, base: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        angles = torch.outer(torch.arange(n_positions, dtype=torch.float32), inv_freq)  # (P, D/2)
        angles = torch.cat([angles, angles], dim=-1)  # (P, D)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x, position_ids, heads_axis=1):
        """x (B, H, T, D), or (B, T, H, D) with heads_axis=2; position_ids (B, T)
        -> x rotated by each token's position."""
        cos = self.cos[position_ids].unsqueeze(heads_axis).to(x.dtype)  # (B, 1, T, D) or (B, T, 1, D)
        sin = self.sin[position_ids].unsqueeze(heads_axis).to(x.dtype)
        half = x.size(-1) // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin


def relative_position_bucket(relative, bidirectional: bool, num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5's buckets for key_position - query_position: exact for small distances, then
    logarithmically wider up to max_distance (beyond it, one bucket). Bidirectional buckets
    give half of the range to keys after the query; causal ones see only the past."""
    buckets = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative > 0).long() * num_buckets
        distance = relative.abs()
    else:
        distance = (-relative).clamp(min=0)
    exact = num_buckets // 2
    log_ratio = torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact)
    far = (exact + (log_ratio * (num_buckets - exact)).long()).clamp(max=num_buckets - 1)
    return buckets + torch.where(distance < exact, distance, far)


class RelativePositionBias(nn.Module):
    """A learned scalar per (bucket, head), added to attention scores (T5). Computed once per
    forward and shared by every layer of a stack."""

    def __init__(self, n_head: int, num_buckets: int = 32, max_distance: int = 128, bidirectional: bool = True):
        super().__init__()
        self.num_buckets, self.max_distance, self.bidirectional = num_buckets, max_distance, bidirectional
        self.embedding = nn.Embedding(num_buckets, n_head)

    def forward(self, t_query: int, t_key: int, offset: int = 0) -> torch.Tensor:
        """-> (1, H, Tq, Tk) bias; the queries sit at positions offset .. offset + Tq - 1."""
        device = self.embedding.weight.device
        query = torch.arange(offset, offset + t_query, device=device)[:, None]
        key = torch.arange(t_key, device=device)[None, :]
        buckets = relative_position_bucket(key - query, self.bidirectional, self.num_buckets, self.max_distance)
        return self.embedding(buckets).permute(2, 0, 1).unsqueeze(0)


class AxialPositions(nn.Module):
    """Axial position embeddings (Reformer): position p = i * cols + j is the concatenation
    of a row vector (for i) and a column vector (for j), so a (rows * cols)-long table costs
    only rows * d_row + cols * d_col parameters."""

    def __init__(self, shape, dims, std=0.02):
        super().__init__()
        (rows, cols), (d_row, d_col) = shape, dims
        self.rows = nn.Parameter(torch.randn(rows, d_row) * std)
        self.cols = nn.Parameter(torch.randn(cols, d_col) * std)

    def forward(self, position_ids):  # (B, T) -> (B, T, d_row + d_col)
        cols = self.cols.size(0)
        return torch.cat([self.rows[position_ids // cols], self.cols[position_ids % cols]], dim=-1)
