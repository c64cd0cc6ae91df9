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
layout; the attention inside chunks normalises each position over all its rounds at once and
adds the rounds straight back into sequence order, with a hand-written backward that keeps
only the probabilities (`_ChunkAttention`).
"""

import math

import torch
from torch import nn

from .attention import AttentionBase, key_mask_from

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
    # argmax over [xR, -xR] without building it: the largest |xR|, in the second half if negative
    top = rotated.abs().argmax(dim=-1, keepdim=True)
    return (top + (rotated.gather(-1, top) < 0) * (n_buckets // 2)).squeeze(-1)


def look_around(x, before, after):
    """(B, H, N, L, ...) chunks -> (B, H, N, L * (before + 1 + after), ...): each chunk with
    its neighbours, wrapping around the ends."""
    return torch.cat([torch.roll(x, shifts=-i, dims=2) for i in range(-before, after + 1)], dim=3)


def self_index(q_pos, k_pos, batch_shape):
    """Flat indices into scores (*batch_shape, Lq, Lk) where a query slot meets its own position."""
    same = q_pos.unsqueeze(-1) == k_pos.unsqueeze(-2)
    return same.expand(*batch_shape, *same.shape[-2:]).flatten().nonzero().squeeze(1)


def look_around_self_index(q_pos, k_pos, chunks_before, chunks_per_round):
    """`self_index` for LSH's look-around chunks without comparing every pair. q_pos (B, H, N, L)
    sorted slots, k_pos (B, H, N, S * L) their look-around keys. A slot meets itself on the
    diagonal of its own chunk; a neighbouring chunk can repeat one of its positions only if it
    belongs to another hashing round (a round holds each position once) or wraps around onto the
    chunk itself, so only those chunks are compared."""
    b, h, n, length = q_pos.shape
    width = k_pos.size(-1)
    slots = torch.arange(b * h * n * length, device=q_pos.device)
    found = [slots * width + chunks_before * length + slots % length]
    chunk = torch.arange(n, device=q_pos.device)
    for s in range(width // length):
        neighbour = (chunk + s - chunks_before) % n
        suspects = ((neighbour == chunk) | (neighbour // chunks_per_round != chunk // chunks_per_round)).nonzero()[:, 0]
        if s == chunks_before or not len(suspects):
            continue
        keys = k_pos[:, :, suspects, s * length:(s + 1) * length]  # (B, H, C, L)
        bi, hi, ci, i, j = (q_pos[:, :, suspects].unsqueeze(-1) == keys.unsqueeze(-2)).nonzero(as_tuple=True)
        found.append((((bi * h + hi) * n + suspects[ci]) * length + i) * width + s * length + j)
    return torch.cat(found)


def chunked_attention(q, k, v, q_pos, k_pos, t, causal, key_mask=None, dropout_p=0.0, self_at=None):
    """Attention inside chunks with the Reformer masks, gathered back to sequence positions.

    q (B, H, ..., Lq, D) query slots, k and v (B, H, ..., Lk, D) the keys each group of slots
    sees; q_pos (..., Lq) and k_pos (..., Lk) are the slots' positions in [0, t) (for the causal
    mask and the way back); key_mask (..., Lk) bool, True = real; self_at: `self_index` of the
    scores to give the self score (None: no self mask). A position that fills several slots (one
    per hashing round) gets one softmax over the keys of all its slots: the Reformer's merge of
    rounds weighted by exp(logsumexp of each round's scores). -> (B, t, H, D), ready for the
    output projection.
    """
    hidden = None  # (..., Lq, Lk) True where a key is hidden by the causal or padding mask
    if causal:
        hidden = q_pos.unsqueeze(-1) < k_pos.unsqueeze(-2)
    if key_mask is not None:
        padding = ~key_mask.unsqueeze(-2)
        hidden = padding if hidden is None else hidden | padding
    rows = sequence_rows(q_pos, q.size(0), q.size(1), t, q.dim() - 3).flatten()  # into the (B * t * H, D) output
    return _ChunkAttention.apply(q, k, v, rows, t, hidden, self_at, dropout_p)


def sequence_rows(positions, b, h, t, trailing):
    """Rows of a (B, t, H, D) tensor seen as (B * t * H, D): for positions that broadcast to
    (B, H, *) with `trailing` dims after the heads -> (B, H, *) row indices."""
    batch = torch.arange(b, device=positions.device).view(b, 1, *[1] * trailing)
    head = torch.arange(h, device=positions.device).view(h, *[1] * trailing)
    return (batch * t + positions) * h + head


class _ChunkAttention(torch.autograd.Function):
    """softmax attention of every slot over its keys, normalised over all slots of the same
    position, summed into that position; a hand-written backward keeps only the probabilities
    and makes a few passes over the score-sized tensors where autograd would make many (this is
    most of the layer's elementwise time)."""

    @staticmethod
    def forward(ctx, q, k, v, rows, t, hidden, self_at, dropout_p):
        b, h, d = q.size(0), q.size(1), q.size(-1)  # out (B, t, H, D)
        scores = q @ k.transpose(-1, -2)  # (..., Lq, Lk)
        if hidden is not None:
            scores.masked_fill_(hidden, MASKED)
        if self_at is not None:
            scores.view(-1).index_fill_(0, self_at, SELF_MASKED)
        # each slot's logsumexp as torch computes it, reusing its exponentials; then one
        # normaliser per position over its slots: P = exp(S - top) * exp(top - total)
        top = scores.amax(dim=-1, keepdim=True)
        probs = scores.sub_(top).exp_()
        lse = probs.sum(dim=-1, keepdim=True).log_().add_(top)
        total = _logsumexp_by_row(lse.flatten(), rows, b * h * t)[rows].view_as(top)
        probs.mul_(torch.exp(top - total))
        kept = None
        if dropout_p > 0:
            kept = torch.rand_like(probs) >= dropout_p
            dropped = probs * kept / (1 - dropout_p)
        else:
            dropped = probs
        out = q.new_zeros(b * t * h, d).index_add_(0, rows, (dropped @ v).view(-1, d)).view(b, t, h, d)
        constant = top <= SELF_MASKED  # slots whose every key was replaced: their scores are constants
        ctx.save_for_backward(q, k, v, probs, kept, rows, out, constant)
        ctx.dropout_p = dropout_p
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, probs, kept, rows, out, constant = ctx.saved_tensors
        d = q.size(-1)
        grad_slots = grad_out.reshape(-1, d).index_select(0, rows).view(*probs.shape[:-1], d)  # (..., Lq, D)
        dropped = probs if kept is None else probs * kept / (1 - ctx.dropout_p)
        grad_v = dropped.transpose(-1, -2) @ grad_slots
        grad_probs = grad_slots @ v.transpose(-1, -2)
        if kept is not None:
            grad_probs = grad_probs * kept / (1 - ctx.dropout_p)
        # d/dS of a softmax over all of a position's slots: P * (dP - sum(dP * P)), where the sum
        # over the position's keys is dO . O (a D-long dot product per position)
        shift = (grad_out * out).sum(-1).flatten()[rows].view(*probs.shape[:-1], 1)
        grad_scores = grad_probs.sub_(shift).mul_(probs)
        # replaced scores are constants: next to a real key their probability, and so their
        # gradient, is exactly 0; a slot with no real key gets no gradient at all
        if constant.any():
            grad_scores.masked_fill_(constant, 0.0)
        return grad_scores @ k, grad_scores.transpose(-1, -2) @ q, grad_v, None, None, None, None, None


def _logsumexp_by_row(values, rows, n_rows):
    """logsumexp of `values` (S,) grouped by `rows` (S,) -> (n_rows,)."""
    top = values.new_full((n_rows,), -math.inf).scatter_reduce_(0, rows, values, "amax")
    sums = values.new_zeros(n_rows).index_add_(0, rows, torch.exp(values - top[rows]))
    return top + sums.log()


def normalize_keys(x, eps=1e-6):
    """Unit-RMS vectors divided by sqrt(D): the keys of shared-QK attention."""
    return x * (torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) / math.sqrt(x.size(-1)))


def lsh_attention(qk, v, buckets, chunk_length, chunks_before=1, chunks_after=0, causal=False, key_mask=None,
                  dropout_p=0.0):
    """qk and v (B, T, H, D); buckets (B, H, R, T) already offset so that rounds never share a
    bucket; key_mask (B, T) bool. T must be a multiple of chunk_length. -> (B, T, H, D)."""
    b, t, h, d = qk.shape
    rounds = buckets.size(2)
    flat = buckets.flatten(2)  # (B, H, R*T)
    order = torch.arange(rounds * t, device=qk.device)
    pos = (flat * (rounds * t) + order).argsort(dim=-1) % t  # (B, H, R*T) sorted by bucket, then position

    def gather(x, index):  # (B, T, H, D) at (B, H, ...) positions -> (B, H, ..., D), whole D-vectors (fast)
        rows = sequence_rows(index.reshape(b, h, -1), b, h, t, 1).flatten()
        return x.reshape(-1, d).index_select(0, rows).view(b, h, -1, d)

    def chunks(x):
        return x.reshape(b, h, -1, chunk_length, *x.shape[3:])  # (B, H, N, L, ...)

    q_pos = chunks(pos)  # (B, H, N, L)
    k_pos = look_around(q_pos, chunks_before, chunks_after)  # (B, H, N, L * (before + 1 + after))
    # gather keys and values straight into their look-around layout (no sorted copy in between)
    q_sorted = chunks(gather(qk, pos))  # (B, H, N, L, D)
    k_sorted = gather(normalize_keys(qk), k_pos).view(*k_pos.shape, d)
    v_sorted = gather(v, k_pos).view(*k_pos.shape, d)
    chunk_mask = None
    if key_mask is not None:
        chunk_mask = key_mask[:, None, :].expand(b, h, t).gather(2, k_pos.flatten(2)).view(k_pos.shape)
    self_at = look_around_self_index(q_pos, k_pos, chunks_before, t // chunk_length)
    return chunked_attention(q_sorted, k_sorted, v_sorted, q_pos, k_pos, t, causal, chunk_mask, dropout_p, self_at)


def full_shared_qk_attention(qk, v, causal=False, key_mask=None, dropout_p=0.0):
    """Shared-QK attention over the whole sequence (what LSH attention does for T <= one chunk).
    qk and v (B, T, H, D) -> (B, T, H, D)."""
    b, t, h, _ = qk.shape
    pos = torch.arange(t, device=qk.device)
    mask = key_mask[:, None, :] if key_mask is not None else None
    q, k, v = (x.transpose(1, 2) for x in (qk, normalize_keys(qk), v))  # (B, H, T, D)
    return chunked_attention(q, k, v, pos, pos, t, causal, mask, dropout_p, self_index(pos, pos, (b, h)))


class LSHSelfAttention(AttentionBase):
    """Multi-head LSH self-attention with a shared query/key projection; no biases.

    hash_seed fixes the random rotations (reproducible hashing); None draws new ones from the
    global generator on every call. rotary: a RotaryEmbedding applied to the shared vectors
    before hashing (so queries and keys carry positions), or None for no positions here.

    The one exception to the shared projection names: qk_proj serves the targets "q" and "k"
    alike (adapting either adapts both). Heads cannot be pruned: the rotations are drawn for
    all heads at once, so removing one would re-draw the hashing of every other head.
    """

    projections = {"q": ("qk_proj",), "k": ("qk_proj",), "v": ("v_proj",), "o": ("out_proj",)}
    prunable_heads = False

    def __init__(self, d_model, n_head, head_dim=None, n_buckets=32, n_hashes=2, chunk_length=64, chunks_before=1,
                 chunks_after=0, causal=False, hash_seed=None, dropout=0.0, rotary=None):
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
        self.rotary = rotary
        inner = n_head * self.head_dim
        self.qk_proj = nn.Linear(d_model, inner, bias=False)
        self.v_proj = nn.Linear(d_model, inner, bias=False)
        self.out_proj = nn.Linear(inner, d_model, bias=False)

    def forward(self, x, *, mask=None, key_mask=None, causal=False, position_ids=None, cache=None, layer_idx=0,
                return_weights=False):
        """x (B, T, C); key_mask (B, T) bool, True = real token (or a (B, 1, 1, T) padding `mask`);
        position_ids (B, T) for the rotary positions. T must be at most one chunk or a multiple of
        chunk_length. No KV cache (the buckets are recomputed) and no weights (never formed)."""
        if cache is not None or return_weights:
            raise ValueError("LSH attention takes no KV cache and returns no attention weights")
        key_mask, causal = key_mask_from(mask, key_mask), causal or self.causal
        b, t, _ = x.shape
        qk, v = (proj(x).view(b, t, self.n_head, self.head_dim) for proj in (self.qk_proj, self.v_proj))  # (B, T, H, D)
        if self.rotary is not None:
            qk = self.rotary(qk, position_ids, heads_axis=2)
        dropout_p = self.dropout if self.training else 0.0
        if t <= self.chunk_length:
            out = full_shared_qk_attention(qk, v, causal, key_mask, dropout_p)
        else:
            if t % self.chunk_length:
                raise ValueError(f"sequence length {t} must be a multiple of chunk_length {self.chunk_length}")
            buckets = self._buckets(qk.transpose(1, 2), key_mask)
            out = lsh_attention(qk, v, buckets, self.chunk_length, self.chunks_before, self.chunks_after, causal,
                                key_mask, dropout_p)
        return self.out_proj(out.reshape(b, t, self.n_head * self.head_dim))

    def _buckets(self, qk, key_mask):
        """qk (B, H, T, D) -> (B, H, R, T) bucket ids, offset per round; padding gets a bucket of its own."""
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


class LocalSelfAttention(AttentionBase):
    """The Reformer's local attention: separate q, k, v projections (no biases); the sequence
    is cut into chunks of `chunk_length` and each chunk attends to itself and its neighbours
    (wrapping around, as in the reference). Keys are scaled by 1/sqrt(head_dim). rotary: a
    RotaryEmbedding for queries and keys, or None."""

    def __init__(self, d_model, n_head, head_dim=None, chunk_length=64, chunks_before=1, chunks_after=0,
                 causal=False, dropout=0.0, rotary=None):
        super().__init__()
        self.n_head = n_head
        self.head_dim = head_dim or d_model // n_head
        self.chunk_length, self.chunks_before, self.chunks_after = chunk_length, chunks_before, chunks_after
        self.causal = causal
        self.dropout = dropout
        self.rotary = rotary
        inner = n_head * self.head_dim
        self.q_proj = nn.Linear(d_model, inner, bias=False)
        self.k_proj = nn.Linear(d_model, inner, bias=False)
        self.v_proj = nn.Linear(d_model, inner, bias=False)
        self.out_proj = nn.Linear(inner, d_model, bias=False)

    def forward(self, x, *, mask=None, key_mask=None, causal=False, position_ids=None, cache=None, layer_idx=0,
                return_weights=False):
        """x (B, T, C); key_mask (B, T) bool, True = real token (or a (B, 1, 1, T) padding `mask`);
        position_ids (B, T) for the rotary positions. T: at most one chunk or a multiple. No KV
        cache and no weights."""
        if cache is not None or return_weights:
            raise ValueError("local chunked attention takes no KV cache and returns no attention weights")
        key_mask, causal = key_mask_from(mask, key_mask), causal or self.causal
        b, t, _ = x.shape
        q, k, v = (proj(x).view(b, t, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        if self.rotary is not None:
            q, k = self.rotary(q, position_ids), self.rotary(k, position_ids)
        k = k / math.sqrt(self.head_dim)
        pos = torch.arange(t, device=x.device)
        key_mask = None if key_mask is None else key_mask[:, None, :]  # (B, 1, T)
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
        out = chunked_attention(chunks(q), look_around(chunks(k), before, after), look_around(chunks(v), before, after),
                                q_pos, k_pos, t, causal, key_mask, dropout_p)  # (B, T, H, D)
        return self.out_proj(out.reshape(b, t, -1))
