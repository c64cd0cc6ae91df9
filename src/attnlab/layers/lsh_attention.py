"""LSH self-attention (Kitaev et al. 2020, "Reformer"), and the Reformer's chunked local attention.

Queries and keys share one projection. Each of `n_hashes` rounds hashes every vector into
one of `n_buckets` buckets by a random rotation (argmax over [xR, -xR]); the sequence is
sorted by (round, bucket, position), cut into chunks of `chunk_length`, and each chunk
attends to itself and `chunks_before` / `chunks_after` neighbouring chunks (wrapping
around). A token never attends to itself unless nothing else is visible. The rounds are
merged with weights softmax(logsumexp of each round's scores). Memory is
O(n_hashes * T * chunk_length), not O(T^2).

Keys are the shared vectors normalised to unit RMS and divided by sqrt(head_dim); queries
are left as they are. Masked scores take a large negative value rather than -inf so a row
with only its own position visible still has a finite softmax (as in the reference).

Speed: keys and values are gathered row by row straight into each chunk's look-around
layout, and the attention inside chunks has a hand-written backward that keeps only the
probabilities (`_ChunkAttention`).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

MASKED = -1e9  # score for a key hidden by the causal or padding mask
SELF_MASKED = -1e5  # score for a token's own position: used only when nothing else is visible


def hash_buckets(vectors, n_buckets, n_hashes, generator=None):
    """vectors (B, H, T, D) -> bucket ids (B, H, R, T) in [0, n_buckets), one row per round."""
    b, h, t, d = vectors.shape
    if n_buckets == 1:
        return torch.zeros(b, h, n_hashes, t, dtype=torch.long, device=vectors.device)
    rotations = torch.randn((h, d, n_hashes, n_buckets // 2), generator=generator, device=vectors.device,
                            dtype=vectors.dtype)
    rotated = torch.einsum("bhtd,hdrk->bhrtk", vectors.detach(), rotations)  # (B, H, R, T, n_buckets/2)
    return torch.cat([rotated, -rotated], dim=-1).argmax(dim=-1)


def look_around(x, before, after):
    """(B, H, N, L, ...) chunks -> (B, H, N, L * (before + 1 + after), ...): each chunk with
    its neighbours, wrapping around the ends."""
    return torch.cat([torch.roll(x, shifts=-i, dims=2) for i in range(-before, after + 1)], dim=3)


def chunked_attention(q, k, v, q_pos, k_pos, causal, key_mask=None, dropout_p=0.0, mask_self=True):
    """Attention inside chunks with the Reformer masks (the self mask only if `mask_self`).

    q (..., Lq, D), k and v (..., Lk, D); q_pos (..., Lq) and k_pos (..., Lk) are the original
    sequence positions (for the causal and self masks); key_mask (..., Lk) bool, True = real.
    Returns (out (..., Lq, D), logsumexp of each query's scores (..., Lq)).
    """
    hidden = None  # (..., Lq, Lk) True where a key is hidden by the causal or padding mask
    if causal:
        hidden = q_pos.unsqueeze(-1) < k_pos.unsqueeze(-2)
    if key_mask is not None:
        padding = ~key_mask.unsqueeze(-2)
        hidden = padding if hidden is None else hidden | padding
    is_self = q_pos.unsqueeze(-1) == k_pos.unsqueeze(-2) if mask_self else None
    return _ChunkAttention.apply(q, k, v, hidden, is_self, dropout_p)


class _ChunkAttention(torch.autograd.Function):
    """softmax attention that also returns the logsumexp of the scores, with a hand-written
    backward: it keeps only the probabilities and makes a few passes over the score-sized
    tensors where autograd would make many (this is most of the layer's elementwise time)."""

    @staticmethod
    def forward(ctx, q, k, v, hidden, is_self, dropout_p):
        scores = q @ k.transpose(-1, -2)  # (..., Lq, Lk)
        if hidden is not None:
            scores.masked_fill_(hidden, MASKED)
        if is_self is not None:
            scores.masked_fill_(is_self, SELF_MASKED)
        # logsumexp as torch computes it, reusing its exponentials: P = exp(S - max) * exp(max - lse)
        top = scores.amax(dim=-1, keepdim=True)
        probs = scores.sub_(top).exp_()
        lse = probs.sum(dim=-1, keepdim=True).log_().add_(top)
        probs.mul_(torch.exp(top - lse))
        kept = None
        if dropout_p > 0:
            kept = torch.rand_like(probs) >= dropout_p
            dropped = probs * kept / (1 - dropout_p)
        else:
            dropped = probs
        out = dropped @ v
        ctx.save_for_backward(q, k, v, probs, kept, hidden, is_self, out)
        ctx.dropout_p = dropout_p
        return out, lse.squeeze(-1)

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        q, k, v, probs, kept, hidden, is_self, out = ctx.saved_tensors
        dropped = probs if kept is None else probs * kept / (1 - ctx.dropout_p)
        grad_v = dropped.transpose(-1, -2) @ grad_out
        grad_probs = grad_out @ v.transpose(-1, -2)
        if kept is not None:
            grad_probs = grad_probs * kept / (1 - ctx.dropout_p)
        # d/dS of exp(S - logsumexp(S)) and of logsumexp(S): P * (dP - sum(dP * P) + dlse), where
        # sum_j dP_ij P_ij = dO_i . O_i (a D-long dot product instead of an Lk-long one)
        shift = (grad_out * out).sum(-1, keepdim=True) - grad_lse.unsqueeze(-1)
        grad_scores = grad_probs.sub_(shift).mul_(probs)
        for replaced in (hidden, is_self):  # replaced scores are constants
            if replaced is not None:
                grad_scores.masked_fill_(replaced, 0.0)
        return grad_scores @ k, grad_scores.transpose(-1, -2) @ q, grad_v, None, None, None


def normalize_keys(x, eps=1e-6):
    """Unit-RMS vectors divided by sqrt(D): the keys of shared-QK attention."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) / math.sqrt(x.size(-1))


def lsh_attention(qk, v, buckets, chunk_length, chunks_before=1, chunks_after=0, causal=False, key_mask=None,
                  dropout_p=0.0):
    """qk and v (B, H, T, D); buckets (B, H, R, T) already offset so that rounds never share a
    bucket; key_mask (B, T) bool. T must be a multiple of chunk_length. -> (B, H, T, D)."""
    b, h, t, d = qk.shape
    rounds = buckets.size(2)
    flat = buckets.flatten(2)  # (B, H, R*T)
    order = torch.arange(rounds * t, device=qk.device)
    sorted_idx = (flat * (rounds * t) + order).argsort(dim=-1)  # by bucket, then by position
    undo_idx = sorted_idx.argsort(dim=-1)
    pos = sorted_idx % t  # (B, H, R*T) original position of each sorted slot

    def rows(index, length):  # (B, H, ...) indices into dim 2 of length `length` -> rows of (B*H*length, D)
        index = index.reshape(b, h, -1)
        return (torch.arange(b * h, device=index.device).view(b, h, 1) * length + index).flatten()

    def gather(x, index, length):  # whole D-vectors at a time: much faster than an element gather
        return x.reshape(-1, d).index_select(0, rows(index, length)).view(b, h, -1, d)

    def chunks(x):
        return x.reshape(b, h, -1, chunk_length, *x.shape[3:])  # (B, H, N, L, ...)

    q_pos = chunks(pos)  # (B, H, N, L)
    k_pos = look_around(q_pos, chunks_before, chunks_after)  # (B, H, N, L * (before + 1 + after))
    # gather keys and values straight into their look-around layout (no sorted copy in between)
    q_sorted = chunks(gather(qk, pos, t))  # (B, H, N, L, D)
    k_sorted = gather(normalize_keys(qk), k_pos, t).view(*k_pos.shape, d)
    v_sorted = gather(v, k_pos, t).view(*k_pos.shape, d)
    chunk_mask = None
    if key_mask is not None:
        chunk_mask = key_mask[:, None, :].expand(b, h, t).gather(2, k_pos.flatten(2)).view(k_pos.shape)
    out, lse = chunked_attention(q_sorted, k_sorted, v_sorted, q_pos, k_pos, causal, chunk_mask, dropout_p)
    out = gather(out, undo_idx, rounds * t)  # back to (round, position) order
    lse = lse.reshape(b, h, rounds * t).gather(2, undo_idx)
    out, lse = out.view(b, h, rounds, t, d), lse.view(b, h, rounds, t, 1)
    weights = torch.exp(lse - torch.logsumexp(lse, dim=2, keepdim=True))  # each round's share of the mass
    return (out * weights).sum(dim=2)


def full_shared_qk_attention(qk, v, causal=False, key_mask=None, dropout_p=0.0):
    """Shared-QK attention over the whole sequence (what LSH attention does for T <= one chunk)."""
    t = qk.size(2)
    pos = torch.arange(t, device=qk.device)
    mask = key_mask[:, None, :] if key_mask is not None else None
    out, _ = chunked_attention(qk, normalize_keys(qk), v, pos, pos, causal, mask, dropout_p)
    return out


class LSHSelfAttention(nn.Module):
    """Multi-head LSH self-attention with a shared query/key projection; no biases.

    hash_seed fixes the random rotations (reproducible hashing); None draws new ones from the
    global generator on every call.
    """

    def __init__(self, d_model, n_head, head_dim=None, n_buckets=32, n_hashes=2, chunk_length=64, chunks_before=1,
                 chunks_after=0, causal=False, hash_seed=None, dropout=0.0):
        super().__init__()
        if n_buckets != 1 and n_buckets % 2:
            raise ValueError(f"n_buckets must be 1 or even, got {n_buckets}")
        self.n_head = n_head
        self.head_dim = head_dim or d_model // n_head
        self.n_buckets, self.n_hashes = n_buckets, n_hashes
        self.chunk_length, self.chunks_before, self.chunks_after = chunk_length, chunks_before, chunks_after
        self.causal = causal
        self.hash_seed = hash_seed
        self.dropout = dropout
        inner = n_head * self.head_dim
        self.qk_proj = nn.Linear(d_model, inner, bias=False)
        self.v_proj = nn.Linear(d_model, inner, bias=False)
        self.out_proj = nn.Linear(inner, d_model, bias=False)

    def _heads(self, x):
        b, t, _ = x.shape
        return x.reshape(b, t, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)

    def forward(self, x, attention_mask=None):
        """x (B, T, C); attention_mask (B, T) 1 for real tokens, 0 for padding. T must be at
        most one chunk or a multiple of chunk_length."""
        b, t, _ = x.shape
        both = F.linear(x, torch.cat([self.qk_proj.weight, self.v_proj.weight]))  # one matmul for the two
        qk, v = (self._heads(part) for part in both.chunk(2, dim=-1))
        key_mask = attention_mask.bool() if attention_mask is not None else None
        dropout_p = self.dropout if self.training else 0.0
        if t <= self.chunk_length:
            out = full_shared_qk_attention(qk, v, self.causal, key_mask, dropout_p)
        else:
            if t % self.chunk_length:
                raise ValueError(f"sequence length {t} must be a multiple of chunk_length {self.chunk_length}")
            out = lsh_attention(qk, v, self._buckets(qk, key_mask), self.chunk_length, self.chunks_before,
                                self.chunks_after, self.causal, key_mask, dropout_p)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, self.n_head * self.head_dim))

    def _buckets(self, qk, key_mask):
        """(B, H, R, T) bucket ids, offset per round; padding gets a bucket of its own."""
        generator = None
        if self.hash_seed is not None:
            generator = torch.Generator(device=qk.device).manual_seed(self.hash_seed)
        buckets = hash_buckets(qk, self.n_buckets, self.n_hashes, generator)
        per_round = self.n_buckets
        if key_mask is not None and not bool(key_mask.all()):
            buckets = buckets.masked_fill(~key_mask[:, None, None, :], per_round)
            per_round += 1
        offsets = torch.arange(self.n_hashes, device=qk.device).view(1, 1, -1, 1) * per_round
        return buckets + offsets


class LocalSelfAttention(nn.Module):
    """The Reformer's local attention: separate q, k, v projections (no biases); the sequence
    is cut into chunks of `chunk_length` and each chunk attends to itself and its neighbours
    (wrapping around, as in the reference). Keys are scaled by 1/sqrt(head_dim)."""

    def __init__(self, d_model, n_head, head_dim=None, chunk_length=64, chunks_before=1, chunks_after=0,
                 causal=False, dropout=0.0):
        super().__init__()
        self.n_head = n_head
        self.head_dim = head_dim or d_model // n_head
        self.chunk_length, self.chunks_before, self.chunks_after = chunk_length, chunks_before, chunks_after
        self.causal = causal
        self.dropout = dropout
        inner = n_head * self.head_dim
        self.q_proj = nn.Linear(d_model, inner, bias=False)
        self.k_proj = nn.Linear(d_model, inner, bias=False)
        self.v_proj = nn.Linear(d_model, inner, bias=False)
        self.out_proj = nn.Linear(inner, d_model, bias=False)

    def forward(self, x, attention_mask=None):
        """x (B, T, C); attention_mask (B, T) 1 = real token. T: at most one chunk or a multiple."""
        b, t, _ = x.shape
        q, k, v = (proj(x).view(b, t, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        k = k / math.sqrt(self.head_dim)
        pos = torch.arange(t, device=x.device)
        key_mask = attention_mask.bool()[:, None, :] if attention_mask is not None else None  # (B, 1, T)
        length = min(t, self.chunk_length)
        if t % length:
            raise ValueError(f"sequence length {t} must be a multiple of chunk_length {self.chunk_length}")
        before, after = (self.chunks_before, self.chunks_after) if t > length else (0, 0)

        def chunks(y):  # (B, H, T, ...) -> (B, H, N, L, ...)
            return y.reshape(*y.shape[:2], t // length, length, *y.shape[3:])

        q_pos = chunks(pos.view(1, 1, t))
        k_pos = look_around(q_pos, before, after)
        if key_mask is not None:
            key_mask = look_around(chunks(key_mask), before, after)
        dropout_p = self.dropout if self.training else 0.0
        out, _ = chunked_attention(chunks(q), look_around(chunks(k), before, after),
                                   look_around(chunks(v), before, after), q_pos, k_pos, self.causal, key_mask,
                                   dropout_p, mask_self=False)
        return self.out_proj(out.reshape(b, self.n_head, t, self.head_dim).transpose(1, 2).reshape(b, t, -1))
