"""Scaled dot-product attention (two paths that agree), the attention contract, and multi-head attention.

Shapes: q (B, H, Tq, D), k and v (B, H, Tk, D). A boolean mask is True where a query may
attend; it broadcasts to (B, H, Tq, Tk). `bias` is an additive float term of the same
broadcast shape (relative position bias, ALiBi, ...). A query whose keys are all masked
gets a zero output (and zero gradient), never NaN.

The attention contract. Every self-attention module subclasses `AttentionBase`:

* its projections carry the shared names q_proj, k_proj, v_proj, out_proj (the one exception:
  shared-QK attention has a single qk_proj), and the class declares them in `projections`, a
  table from compression target ("q", "k", "v", "o") to attribute names; compression finds a
  module's linears through it, so a new attention layer enrols itself by declaring it;
* `forward(x, *, mask, key_mask, causal, position_ids, cache, layer_idx, return_weights, ...)`
  takes the same keywords everywhere (module-specific extras follow them, keyword-only):
    mask      bool, True = may attend, broadcasting to (B, H, Tq, Tk), or None
    key_mask  (B, Tk) bool, True = a real key, False = padding (the form sparse kernels need);
              a module combines it with `mask`. No 0/1 integer or additive masks cross this line.
    causal    True adds the causal mask (a module built causal is causal regardless)
    position_ids (B, T) for rotary positions; cache and layer_idx for incremental decoding;
    return_weights: also return (B, H, Tq, Tk) weights, where the module can.
  A keyword a module cannot honour (a KV cache for block-sparse attention, a general mask for
  a sparse kernel) is refused with a ValueError, never ignored;
* `prunable_heads` says whether whole heads can be removed (compression/prune.py) and
  `select_heads` keeps the module's own per-head state (head counts, per-head biases) in step
  when they are.
"""

import math

import torch
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
        return fused_attention(q, k, v, dropout_p=dropout_p, is_causal=True, scale=scale), None
    may_empty_rows = mask is not None or t_key < t_query  # a causal mask alone leaves each query its own key
    if causal:
        mask = combine_masks(mask, causal_mask(t_query, t_key, device=q.device))
    if backend == "sdpa" and not return_weights:
        # PyTorch's kernels (>= 2.5) give a query with no key a zero output and zero gradients
        attn_mask = mask
        if bias is not None:
            attn_mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
        return fused_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale), None
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
    if mask is None or not may_empty_rows:
        return _math_attention(q, k, v, mask, bias, dropout_p, scale)
    row_has_key = mask.any(dim=-1, keepdim=True)  # (B, H, Tq, 1) broadcastable
    out, weights = _math_attention(q, k, v, mask | ~row_has_key, bias, dropout_p, scale)  # empty rows see all,
    return out * row_has_key, weights * row_has_key  # then give zeros


def fused_attention(q, k, v, attn_mask=None, **options):
    """F.scaled_dot_product_attention, except that on a CPU bf16 and fp16 inputs go through the
    float32 kernel and the output is cast back: the CPU's reduced-precision kernel took 4.7x as
    long as fp32's for a forward + backward at head size 32 and no less at 64 (benchmarks/RESULTS.md,
    issue 23), which made bf16 autocast training slower than fp32 for small models."""
    if q.device.type != "cpu" or q.dtype not in (torch.bfloat16, torch.float16):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, **options)
    if attn_mask is not None and attn_mask.is_floating_point():
        attn_mask = attn_mask.float()
    with torch.autocast("cpu", enabled=False):  # CPU autocast would cast the inputs back to bf16
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=attn_mask, **options)
    return out.to(q.dtype)


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


def key_mask_from(mask, key_mask):
    """The (B, Tk) bool key mask that sparse kernels take: `key_mask` itself, or a padding-shaped
    `mask` (B, 1, 1, Tk) folded into it; any other mask cannot be expressed per key."""
    if mask is None:
        return key_mask
    if mask.dim() != 4 or mask.size(1) != 1 or mask.size(2) != 1:
        raise ValueError(f"this attention takes a padding mask (B, 1, 1, T) or key_mask, not {tuple(mask.shape)}")
    from_mask = mask.reshape(mask.size(0), -1)
    return from_mask if key_mask is None else from_mask & key_mask


def with_key_mask(mask, key_mask):
    """`mask` (broadcasting to (B, H, Tq, Tk)) AND the (B, Tk) key mask -> one boolean mask or None."""
    return combine_masks(mask, None if key_mask is None else key_mask[:, None, None, :])


class AttentionBase(nn.Module):
    """What every self-attention module shares (the contract is at the top of this file).

    `projections`: compression target -> attribute names of this class's linears. Subclasses
    with more or fewer projections redeclare it (sliding-window adds its global projections,
    relative attention its distance projection, shared-QK attention has qk_proj for q and k).
    """

    projections = {"q": ("q_proj",), "k": ("k_proj",), "v": ("v_proj",), "o": ("out_proj",)}
    prunable_heads = True
    pruned = False  # set once heads were removed (compression/structure.py records the count)

    def _heads(self, x, n_head):
        b, t, _ = x.shape
        return x.view(b, t, n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)

    def _merge(self, out):
        """(B, H, T, D) -> out_proj of (B, T, H * D)."""
        b, h, t, d = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, t, h * d))

    def select_heads(self, keep: torch.Tensor):
        """Keep the module's per-head state for heads `keep` (the projections are sliced by the caller)."""
        self.n_head = len(keep)
        self.pruned = True


class MultiHeadAttention(AttentionBase):
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

    def select_heads(self, keep):
        super().select_heads(keep)
        self.n_kv_head = len(keep)

    def forward(self, x, *, mask=None, key_mask=None, causal=False, position_ids=None, cache=None, layer_idx=0,
                return_weights=False, kv_input=None, bias=None, rotary=None):
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
        mask = with_key_mask(mask, key_mask)
        dropout_p = self.dropout if self.training else 0.0
        groups = q.size(0) // k.size(0)  # > 1: each memory row serves that many query rows (beams)
        out, weights = scaled_dot_product_attention(
            _fold_rows(q, groups), k, v, mask=mask, bias=bias, causal=causal, dropout_p=dropout_p,
            scale=self.scale, backend=self.backend, return_weights=return_weights,
        )
        out = self._merge(_unfold_rows(out, groups))
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
