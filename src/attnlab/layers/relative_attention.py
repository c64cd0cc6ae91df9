"""Relative multi-head attention of Transformer-XL (Dai et al. 2019), with a memory.

Queries come from the current segment x (B, T, C); keys and values from [memory; x]
(B, K, C) with K = M + T. The score of query i and key j, at distance d = (i + M) - j, is

    (q_i + u) . k_j            content term, u a learned global content bias
  + (q_i + v) . W_r R_d        position term, v a learned global position bias

scaled by 1/sqrt(D). R is the sinusoidal encoding of the distance. The position term is
computed once against all K distances (K-1 ... 0) and moved into place by a relative shift.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .attention import scaled_dot_product_attention
from .masks import causal_mask
from .positions import sinusoidal_table


def relative_sinusoids(k_len, dim, device=None):
    """(K, dim) encodings of the distances K-1, ..., 1, 0 (sines then cosines)."""
    return sinusoidal_table(k_len, dim, interleaved=False).flip(0).to(device)


def rel_shift(scores):
    """(B, H, T, K) scores whose column j holds distance K-1-j for every row -> column j holds
    distance (i + K - T) - j for row i. Entries with j > i + K - T (the future) are junk and
    must be masked."""
    b, h, t, k = scores.shape
    padded = F.pad(scores, (1, 0))  # (B, H, T, K+1): a zero column in front
    return padded.view(b, h, k + 1, t)[:, :, 1:].reshape(b, h, t, k)


class RelativeMultiHeadAttention(nn.Module):
    def __init__(self, d_model, n_head, head_dim=None, attn_dropout=0.0, backend="sdpa"):
        super().__init__()
        self.n_head = n_head
        self.head_dim = head_dim or d_model // n_head
        self.attn_dropout = attn_dropout
        self.backend = backend
        inner = n_head * self.head_dim
        self.q_proj = nn.Linear(d_model, inner, bias=False)
        self.k_proj = nn.Linear(d_model, inner, bias=False)
        self.v_proj = nn.Linear(d_model, inner, bias=False)
        self.r_proj = nn.Linear(d_model, inner, bias=False)
        self.out_proj = nn.Linear(inner, d_model, bias=False)
        self.content_bias = nn.Parameter(torch.zeros(n_head, self.head_dim))  # u
        self.position_bias = nn.Parameter(torch.zeros(n_head, self.head_dim))  # v

    def _heads(self, x):
        b, t, _ = x.shape
        return x.view(b, t, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)

    def forward(self, x, memory=None, mask=None, pos_emb=None):
        """x (B, T, C); memory (B, M, C) or None (kept out of the graph by the caller).
        mask: bool, True = visible, broadcasting to (B, H, T, K); None = causal with the whole
        memory visible. pos_emb (K, C): precomputed relative_sinusoids, shared by the layers."""
        b, t, _ = x.shape
        context = x if memory is None else torch.cat([memory, x], dim=1)  # (B, K, C)
        k_len = context.size(1)
        if pos_emb is None:
            pos_emb = relative_sinusoids(k_len, x.size(-1), x.device)
        q = self._heads(self.q_proj(x))
        k, v = self._heads(self.k_proj(context)), self._heads(self.v_proj(context))
        r = self.r_proj(pos_emb.to(x.dtype)).view(k_len, self.n_head, self.head_dim).transpose(0, 1)  # (H, K, D)
        scale = self.head_dim ** -0.5
        position = rel_shift((q + self.position_bias[:, None]) @ r.transpose(-1, -2))  # (B, H, T, K)
        if mask is None:
            mask = causal_mask(t, k_len, device=x.device)
        dropout_p = self.attn_dropout if self.training else 0.0
        out, _ = scaled_dot_product_attention(q + self.content_bias[:, None], k, v, mask=mask, bias=position * scale,
                                              dropout_p=dropout_p, scale=scale, backend=self.backend)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, self.n_head * self.head_dim))
