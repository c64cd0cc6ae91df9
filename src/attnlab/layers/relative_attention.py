"""Relative multi-head attention of Transformer-XL (Dai et al. 2019), with a memory.

Queries come from the current segment x (B, T, C); keys and values from [memory; x]
(B, K, C) with K = M + T. The score of query i and key j, at distance d = (i + M) - j, is

    (q_i + u) . k_j            content term, u a learned global content bias
  + (q_i + v) . W_r R_d        position term, v a learned global position bias

scaled by 1/sqrt(D). R is the sinusoidal encoding of the distance.

Two paths. With an explicit mask (padding), dropout, or the math backend, the position term
is computed against all K distances and moved into place by a relative shift, and the scores
go through `scaled_dot_product_attention`. Otherwise (plain causal over the memory and the
segment) `blocked_relative_attention` runs query block by query block: each block's scores
live only while the block is computed, nothing of size T x K is kept for the backward, and a
block never computes the keys that lie in its future.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .attention import AttentionBase, scaled_dot_product_attention, with_key_mask
from .masks import causal_mask, combine_masks
from .positions import sinusoidal_table

QUERY_BLOCK = 128  # score tiles of (B, H, 128, <= K): a few MB at K = 1024, kept in cache


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


def blocked_relative_attention(q_content, q_position, k, v, r, scale, block=QUERY_BLOCK):
    """Causal relative attention: query i (of T) sees keys j <= i + M, M = K - T.

    q_content = q + u and q_position = q + v (B, H, T, D); k, v (B, H, K, D); r (H, K, D) the
    projected encodings of the distances K-1, ..., 0 (row j holds distance K-1-j).
    Products run in v's dtype (bf16 under autocast), the softmax in at least fp32. -> (B, H, T, D)."""
    dtype = v.dtype
    return _BlockedRelativeAttention.apply(q_content.to(dtype), q_position.to(dtype), k.to(dtype), v, r.to(dtype),
                                           scale, block)


class _BlockedRelativeAttention(torch.autograd.Function):
    """Flash-style: the forward keeps each query's log-sum-exp, the backward recomputes each
    block's probabilities from it."""

    @staticmethod
    def forward(ctx, q_content, q_position, k, v, r, scale, block):
        t = q_content.size(2)
        r_padded = F.pad(r, (0, 0, 0, min(block, t) - 1))  # zero rows for the future's "distances"
        out = torch.empty_like(q_content)
        lse = q_content.new_empty(q_content.shape[:-1] + (1,), dtype=_softmax_dtype(v.dtype))
        for start, end in _blocks(t, block):
            probs, lse_block, _ = _block_probs(q_content, q_position, k, r_padded, start, end, scale)
            lse[:, :, start:end] = lse_block
            out[:, :, start:end] = probs.to(v.dtype) @ v[:, :, :probs.size(-1)]
        ctx.save_for_backward(q_content, q_position, k, v, r_padded, out, lse)
        ctx.scale, ctx.block = scale, block
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q_content, q_position, k, v, r_padded, out, lse = ctx.saved_tensors
        dtype, wide = v.dtype, _softmax_dtype(v.dtype)
        grad_qc, grad_qp = torch.empty_like(q_content), torch.empty_like(q_position)
        grad_k, grad_v, grad_r = (torch.zeros_like(x, dtype=wide) for x in (k, v, r_padded))
        delta = (grad_out.to(wide) * out.to(wide)).sum(-1, keepdim=True)  # (B, H, T, 1): sum_j p_ij dp_ij
        for start, end in _blocks(q_content.size(2), ctx.block):
            probs, _, (skewed, r_rows) = _block_probs(q_content, q_position, k, r_padded, start, end, ctx.scale,
                                                      lse[:, :, start:end])
            keys = probs.size(-1)
            d_out = grad_out[:, :, start:end].to(dtype)
            grad_v[:, :, :keys] += probs.to(dtype).transpose(-1, -2) @ d_out
            d_scores = (d_out @ v[:, :, :keys].transpose(-1, -2)).to(wide).sub_(delta[:, :, start:end]).mul_(probs)
            d_scores = d_scores.mul_(ctx.scale).to(dtype)  # (B, H, t, keys)
            grad_qc[:, :, start:end] = d_scores @ k[:, :, :keys]
            grad_k[:, :, :keys] += d_scores.transpose(-1, -2) @ q_content[:, :, start:end]
            d_position = torch.zeros_like(skewed, dtype=dtype)
            _skew(d_position, keys).copy_(d_scores)
            grad_qp[:, :, start:end] = d_position @ r_padded[:, r_rows]
            grad_r[:, r_rows] += torch.einsum("bhiw,bhid->hwd", d_position, q_position[:, :, start:end])
        return grad_qc, grad_qp, grad_k.to(dtype), grad_v.to(dtype), grad_r[:, :k.size(2)].to(dtype), None, None


def _blocks(t, block):
    return [(start, min(start + block, t)) for start in range(0, t, block)]


def _block_probs(q_content, q_position, k, r_padded, start, end, scale, lse=None):
    """Attention probabilities (in at least fp32) of queries start..end-1 over the keys they may see.

    -> (probs (B, H, t, keys), lse (B, H, t, 1), (the unskewed position scores, their r rows))."""
    t_all, k_all = q_content.size(2), k.size(2)
    rows, keys = end - start, end + k_all - t_all  # keys beyond end + M are every row's future
    wide = _softmax_dtype(q_content.dtype)
    scores = (q_content[:, :, start:end] @ k[:, :, :keys].transpose(-1, -2)).to(wide)  # (B, H, t, keys)
    # Position scores against the distances end-1+M down to -(rows-1): r rows T-end ... K+rows-2.
    r_rows = slice(t_all - end, k_all + rows - 1)
    position = (q_position[:, :, start:end] @ r_padded[:, r_rows].transpose(-1, -2)).to(wide)  # (B, H, t, keys + t - 1)
    scores.add_(_skew(position, keys)).mul_(scale)
    future = torch.ones(rows, rows, dtype=torch.bool, device=scores.device).triu(1)
    scores[..., keys - rows:].masked_fill_(future, float("-inf"))
    if lse is None:
        lse = scores.logsumexp(-1, keepdim=True)
    return scores.sub_(lse).exp_(), lse, (position, r_rows)


def _softmax_dtype(dtype):
    return torch.promote_types(dtype, torch.float32)


def _skew(position, keys):
    """View of (B, H, t, W) position scores, W = keys + t - 1, whose column c holds distance
    (end-1+M) - c, as (B, H, t, keys) scores at key j: row i reads columns (t-1-i) + j."""
    b, h, t, width = position.shape
    return position.as_strided((b, h, t, keys), (h * t * width, t * width, width - 1, 1),
                               position.storage_offset() + t - 1)


class RelativeMultiHeadAttention(AttentionBase):
    """Always causal: the relative shift defines only the distances to past keys.

    r_proj is W_{k,R} of the paper, the key projection of the distance encodings, so it answers
    to the compression target "k" beside k_proj (W_{k,E}): a LoRA, quantisation or pruning of
    the keys reaches both kinds of key. Its rows are per head like k_proj's, and so are the
    global biases u and v, so whole heads can be pruned.
    """

    projections = {"q": ("q_proj",), "k": ("k_proj", "r_proj"), "v": ("v_proj",), "o": ("out_proj",)}

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

    def select_heads(self, keep):
        super().select_heads(keep)
        self.content_bias = nn.Parameter(self.content_bias.detach()[keep])
        self.position_bias = nn.Parameter(self.position_bias.detach()[keep])

    def forward(self, x, *, mask=None, key_mask=None, causal=True, position_ids=None, cache=None, layer_idx=0,
                return_weights=False, memory=None, pos_emb=None):
        """x (B, T, C); memory (B, M, C) or None (kept out of the graph by the caller).
        mask: bool, True = visible, broadcasting to (B, H, T, K); key_mask (B, K) over [memory; x];
        both are combined with the causal mask (the whole memory visible). pos_emb (K, C):
        precomputed relative_sinusoids, shared by the layers. position_ids are not used
        (positions are relative); the memory plays the part of a KV cache."""
        if cache is not None:
            raise ValueError("relative attention keeps a memory, not a KV cache; pass memory= instead")
        t = x.size(1)
        context = x if memory is None else torch.cat([memory, x], dim=1)  # (B, K, C)
        k_len = context.size(1)
        if pos_emb is None:
            pos_emb = relative_sinusoids(k_len, x.size(-1), x.device)
        q = self._heads(self.q_proj(x), self.n_head)
        k, v = self._heads(self.k_proj(context), self.n_head), self._heads(self.v_proj(context), self.n_head)
        r = self.r_proj(pos_emb.to(x.dtype)).view(k_len, self.n_head, self.head_dim).transpose(0, 1)  # (H, K, D)
        scale = self.head_dim ** -0.5
        q_content, q_position = q + self.content_bias[:, None], q + self.position_bias[:, None]
        dropout_p = self.attn_dropout if self.training else 0.0
        mask = with_key_mask(mask, key_mask)
        weights = None
        if mask is None and dropout_p == 0.0 and self.backend == "sdpa" and not return_weights:
            out = blocked_relative_attention(q_content, q_position, k, v, r, scale)
        else:
            position = rel_shift(q_position @ r.transpose(-1, -2))  # (B, H, T, K)
            mask = combine_masks(mask, causal_mask(t, k_len, device=x.device))
            out, weights = scaled_dot_product_attention(q_content, k, v, mask=mask, bias=position * scale,
                                                        dropout_p=dropout_p, scale=scale, backend=self.backend,
                                                        return_weights=return_weights)
        out = self._merge(out)
        return (out, weights) if return_weights else out
