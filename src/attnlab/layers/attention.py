"""Scaled dot-product attention (two paths that agree) and multi-head attention.

Shapes: q (B, H, Tq, D), k and v (B, H, Tk, D). A boolean mask is True where a query may
attend; it broadcasts to (B, H, Tq, Tk). `bias` is an additive float term of the same
broadcast shape (relative position bias, ALiBi, ...). A query whose keys are all masked
gets a zero output (and zero gradient), never NaN.
"""

import math

import torch.nn.functional as F
from torch import nn

from .masks import causal_mask, combine_masks

BACKENDS = ("sdpa", "math")


def scaled_dot_product_attention(
    q, k, v, mask=None, bias=None, causal=False, dropout_p=0.0, scale=None,
    backend="sdpa", return_weights=False,
):
    """Returns (out (B, H, Tq, D), weights (B, H, Tq, Tk) or None).

    `causal` aligns the last query with the last key, so it also holds when a KV cache makes
    Tk > Tq. Asking for the weights always takes the math path.
    """
    t_query, t_key = q.size(-2), k.size(-2)
    if causal and t_query == 1:
        causal = False  # a single query, the newest position, sees every key
    if k.size(1) != q.size(1):  # grouped-query attention: share each K/V head among a group
        group = q.size(1) // k.size(1)
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    if causal and mask is None and bias is None and t_query == t_key and not return_weights and backend == "sdpa":
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, scale=scale)
        return out, None
    if causal:
        mask = combine_masks(mask, causal_mask(t_query, t_key, device=q.device))
    row_has_key = None
    if mask is not None:
        row_has_key = mask.any(dim=-1, keepdim=True)  # (B, H, Tq, 1) broadcastable
        mask = mask | ~row_has_key  # let empty rows see everything, then zero them below
    if backend == "math" or return_weights:
        out, weights = _math_attention(q, k, v, mask, bias, dropout_p, scale)
    elif backend == "sdpa":
        attn_mask = mask
        if bias is not None:
            attn_mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)
        weights = None
    else:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
    if row_has_key is not None:
        out = out * row_has_key
        if weights is not None:
            weights = weights * row_has_key
    return out, weights


def _math_attention(q, k, v, mask, bias, dropout_p, scale):
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, Tq, Tk)
    if bias is not None:
        scores = scores + bias
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    dropped = F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights
    return dropped @ v, weights


class MultiHeadAttention(nn.Module):
    """Self- or cross-attention with separate q, k, v and output projections.

    Grouped-query attention when n_kv_head < n_head. `scale=None` means 1/sqrt(head_dim).
    """

    def __init__(self, d_model, n_head, n_kv_head=None, head_dim=None, kv_dim=None, bias=True,
                 out_bias=None, dropout=0.0, scale=None, backend="sdpa"):
        super().__init__()
        self.n_head = n_head
        self.n_kv_head = n_kv_head or n_head
        self.head_dim = head_dim or d_model // n_head
        self.scale = scale
        self.dropout = dropout
        self.backend = backend
        kv_dim = kv_dim or d_model
        inner, kv_inner = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        self.q_proj = nn.Linear(d_model, inner, bias=bias)
        self.k_proj = nn.Linear(kv_dim, kv_inner, bias=bias)
        self.v_proj = nn.Linear(kv_dim, kv_inner, bias=bias)
        self.out_proj = nn.Linear(inner, d_model, bias=bias if out_bias is None else out_bias)

    def _heads(self, x, n_head):
        b, t, _ = x.shape
        return x.view(b, t, n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)

    def forward(self, x, kv_input=None, mask=None, bias=None, causal=False, rotary=None,
                position_ids=None, cache=None, layer_idx=0, return_weights=False):
        """x (B, Tq, C); kv_input (B, Tk, C_kv) for cross-attention, else self-attention.

        rotary: a RotaryEmbedding applied to q and k at `position_ids` (B, T).
        cache: a KVCache; self-attention appends the new keys and values at `layer_idx`,
        cross-attention computes them once per source and reuses them. For cross-attention
        kv_input may hold one row per G consecutive rows of x (B * G rows: the beams of B sources).
        """
        q = self._heads(self.q_proj(x), self.n_head)
        if kv_input is None:
            k = self._heads(self.k_proj(x), self.n_kv_head)
            v = self._heads(self.v_proj(x), self.n_kv_head)
            if rotary is not None:
                q, k = rotary(q, position_ids), rotary(k, position_ids)
            if cache is not None:
                k, v = cache.append(layer_idx, k, v)
        elif cache is not None and cache.has_cross(layer_idx):
            k, v = cache.cross(layer_idx)
        else:
            k = self._heads(self.k_proj(kv_input), self.n_kv_head)
            v = self._heads(self.v_proj(kv_input), self.n_kv_head)
            if cache is not None:
                cache.set_cross(layer_idx, k, v)
        dropout_p = self.dropout if self.training else 0.0
        groups = q.size(0) // k.size(0)  # > 1: each memory row serves that many query rows (beams)
        out, weights = scaled_dot_product_attention(
            _fold_rows(q, groups), k, v, mask=mask, bias=bias, causal=causal, dropout_p=dropout_p,
            scale=self.scale, backend=self.backend, return_weights=return_weights,
        )
        out = _unfold_rows(out, groups)
        b, _, t, _ = out.shape
        out = self.out_proj(out.transpose(1, 2).reshape(b, t, self.n_head * self.head_dim))
        return (out, _unfold_rows(weights, groups)) if return_weights else out


def _fold_rows(x, groups):
    """(B * G, H, T, D) -> (B, H, G * T, D): the G consecutive rows that share one key/value row
    become extra queries of it, so its keys and values are read once, not G times."""
    if groups == 1:
        return x
    rows, h, t, d = x.shape
    return x.view(rows // groups, groups, h, t, d).transpose(1, 2).reshape(rows // groups, h, groups * t, d)


def _unfold_rows(x, groups):
    """Inverse of _fold_rows: (B, H, G * T, D) -> (B * G, H, T, D)."""
    if groups == 1:
        return x
    b, h, gt, d = x.shape
    return x.view(b, h, groups, gt // groups, d).transpose(1, 2).reshape(b * groups, h, gt // groups, d)
