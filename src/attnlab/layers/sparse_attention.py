"""Sparse attention for long sequences, computed without ever forming an n x n matrix.

* Sliding window (Longformer, Beltagy et al. 2020): query i sees keys j with
  |i - j| <= window * dilation and (i - j) divisible by the dilation (j <= i when causal), plus
  every global key; global queries see every key. Scores are computed chunk by chunk: a chunk of
  up to 64 queries against the span of keys within `window` of it (`_chunked_band`), so memory
  is O(n * window).
* Block sparse (BigBird, Zaheer et al. 2020): the sequence is cut into blocks; the first and last
  blocks are global, every other query block sees its 3 neighbouring blocks, the 2 global blocks
  and r random blocks drawn from a seeded generator. Memory O(n * block * (5 + r)).

Shapes: q, k, v (B, H, T, D). `key_mask` (B, T) bool is True for real tokens, False for padding.
A query that sees no key gets a zero output. The modules subclass MultiHeadAttention and reuse
its projections, so a TransformerBlock takes them through its `self_attention` argument.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .attention import MultiHeadAttention, key_mask_from, scaled_dot_product_attention
from .masks import causal_mask


# -- attention over many small blocks ---------------------------------------------------------------

def block_attention(q, k, v, mask, *, scale=None, dropout_p=0.0, backend="sdpa"):
    """softmax(q k^T * scale, masked) v for a batch of small blocks: q (..., Tq, D), k and v
    (..., S, D), mask bool broadcasting to (..., Tq, S), True = visible -> (..., Tq, D).
    A query that sees no key gets zeros.

    backend "sdpa" keeps the (..., Tq, S) probabilities for a hand-written backward, which on CPU
    runs these short rows faster than PyTorch's fused kernel (that one recomputes the scores);
    "math" is the plain autograd path of `scaled_dot_product_attention`, the reference."""
    if backend == "math":
        return scaled_dot_product_attention(q, k, v, mask=mask, scale=scale, dropout_p=dropout_p, backend="math")[0]
    if backend != "sdpa":
        raise ValueError(f"unknown attention backend {backend!r}; choose 'sdpa' or 'math'")
    scale = q.size(-1) ** -0.5 if scale is None else scale
    return _BlockAttention.apply(q, k, v, mask, scale, dropout_p)


class _BlockAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, scale, dropout_p):
        q = q * scale  # scaling q is cheaper than scaling the scores
        probs, kept = _probabilities(q @ k.transpose(-2, -1), mask, dropout_p)  # (..., Tq, S)
        out = _weights(probs, kept, v.dtype) @ v
        ctx.save_for_backward(q, k, v, probs, kept, out)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q_scaled, k, v, probs, kept, out = ctx.saved_tensors
        grad_v = _weights(probs, kept, v.dtype).transpose(-2, -1) @ grad_out
        grad_scores = _scores_grad(grad_out @ v.transpose(-2, -1), probs, kept, grad_out, out).to(q_scaled.dtype)
        grad_q = (grad_scores @ k).mul_(ctx.scale)
        return grad_q, grad_scores.transpose(-2, -1) @ q_scaled, grad_v, None, None, None


def _probabilities(scores, mask, dropout_p):
    """Masked softmax of scores (..., Tq, S), in at least fp32 (in place when the scores are) ->
    (probabilities, kept: None, or the dropout's surviving weights rescaled, 1 / (1 - p) or 0).
    A row with no visible key gets all-zero probabilities."""
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
    # an additive bias is cheaper than a masked fill; a finite one keeps a row with no visible key finite
    bias = torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device)
    probs = _softmax_(scores.add_(bias.masked_fill_(~mask, torch.finfo(scores.dtype).min)))
    has_key = mask.any(-1, keepdim=True)
    if not has_key.all():
        probs = probs.mul_(has_key)
    kept = None
    if dropout_p > 0:
        kept = (torch.rand_like(probs) >= dropout_p) / (1 - dropout_p)
    return probs, kept


def _weights(probs, kept, dtype):
    """The weights the values are averaged with: probabilities after dropout, in the values' dtype."""
    return (probs if kept is None else probs * kept).to(dtype)


def _scores_grad(grad_weights, probs, kept, grad_out, out):
    """Backward through dropout and softmax -> dL/dscores in the probabilities' dtype:
    dS = P * (dP - sum_j P_j dP_j), where sum_j P_j dP_j = dO . O (a D-long dot product)."""
    wide = probs.dtype
    grad_probs = grad_weights.to(wide)
    if kept is not None:
        grad_probs = grad_probs.mul_(kept)
    delta = (grad_out.to(wide) * out.to(wide)).sum(-1, keepdim=True)
    return grad_probs.sub_(delta).mul_(probs)


def _softmax_(scores):
    """Softmax over the last dim, in place: no second score-sized tensor (and faster on CPU)."""
    scores.sub_(scores.amax(-1, keepdim=True)).exp_()
    return scores.div_(scores.sum(-1, keepdim=True))


# -- sliding window + global ------------------------------------------------------------------

def sliding_window_attention(q, k, v, window, *, dilation=1, causal=False, key_mask=None, global_mask=None,
                             scale=None, dropout_p=0.0, backend="sdpa"):
    """Band (+ global keys) attention for every query -> (B, H, T, D).

    dilation: an int, or one int per head. Global *queries* are not special here: their rows see
    only the band and the global keys; `global_query_attention` computes their full rows.
    backend: "sdpa" the fast path (`_BandAttention`), "math" plain autograd over the same spans,
    the reference.
    """
    b, h, t, _ = q.shape
    key_ok = torch.ones(b, t, dtype=torch.bool, device=q.device) if key_mask is None else key_mask.bool()
    band_ok = key_ok if global_mask is None else key_ok & ~global_mask
    globals_ = None
    if global_mask is not None and global_mask.any():
        idx, valid = global_indices(global_mask & key_ok)
        seen = valid[:, None, None, :].expand(b, 1, t, -1)  # (B, 1, T, G): query sees global key
        if causal:
            seen = seen & (idx[:, None, None, :] <= torch.arange(t, device=q.device)[None, None, :, None])
        globals_ = (_gather_positions(k, idx), _gather_positions(v, idx), seen)  # (B, H, G, D) x 2
    dilations = [dilation] * h if isinstance(dilation, int) else list(dilation)
    if len(dilations) != h:
        raise ValueError(f"dilation needs one value per head ({h}), got {len(dilations)}")
    attend = dict(scale=scale, dropout_p=dropout_p, backend=backend)
    out = None
    for d in sorted(set(dilations)):
        heads = [i for i, di in enumerate(dilations) if di == d]
        if len(heads) == h:
            return _dilated_band(q, k, v, band_ok, window, d, causal, globals_, attend)
        pick = torch.tensor(heads, device=q.device)
        out_d = _dilated_band(q[:, pick], k[:, pick], v[:, pick], band_ok, window, d, causal,
                              None if globals_ is None else (globals_[0][:, pick], globals_[1][:, pick], globals_[2]),
                              attend)
        out = torch.zeros_like(q) if out is None else out
        out = out.index_copy(1, pick, out_d)
    return out


def _dilated_band(q, k, v, band_ok, window, dilation, causal, globals_, attend):
    """Dilation d splits the sequence into d interleaved streams (positions equal mod d); within a
    stream the pattern is a plain window, so each stream is handled as an extra head."""
    if dilation == 1:
        return _chunked_band(q, k, v, band_ok[:, None, :], window, causal, globals_, attend)
    b, h, t, _ = q.shape

    def to_streams(x):  # (B, H', T, X) -> (B, H' * d, T / d, X)
        x = F.pad(x, (0, 0, 0, -t % dilation))
        n = x.size(2) // dilation
        return x.view(x.size(0), x.size(1), n, dilation, -1).transpose(2, 3).reshape(x.size(0), -1, n, x.size(-1))

    ok = to_streams(band_ok[:, None, :, None]).squeeze(-1).repeat(1, h, 1)  # (B, H * d, T / d)
    if globals_ is not None:
        keys, values, seen = globals_
        globals_ = (keys.repeat_interleave(dilation, dim=1), values.repeat_interleave(dilation, dim=1),
                    to_streams(seen).repeat(1, h, 1, 1))
    out = _chunked_band(to_streams(q), to_streams(k), to_streams(v), ok, window, causal, globals_, attend)
    n = out.size(2)
    out = out.view(b, h, dilation, n, -1).transpose(2, 3).reshape(b, h, n * dilation, -1)
    return out[:, :, :t]


QUERY_CHUNK = 64  # queries per chunk: smaller chunks waste fewer scores outside the band, larger run faster


def _chunked_band(q, k, v, key_ok, window, causal, globals_, attend):
    """q, k, v (B, H, T, D); key_ok (B, 1 or H, T); globals_ None or (keys (B, H, G, D), values,
    seen (B, 1 or H, T, G)).

    Queries in chunks of c = min(window, QUERY_CHUNK) positions. With the reach r = window rounded
    up to a multiple of c, chunk m sees the span of keys [m c - r, m c + c + r) (or
    [m c - r, m c + c) when causal), plus the global keys; keys outside |i - j| <= window are
    masked inside the span.
    """
    b, h, t, d = q.shape
    c = min(window, QUERY_CHUNK)
    reach = -(-window // c) * c
    n_chunks = -(-t // c)
    span = c + reach if causal else c + 2 * reach
    ok = F.pad(key_ok, (reach, n_chunks * c - t + span - c - reach), value=False).unfold(-1, span, c)
    offset = torch.arange(span, device=q.device)[None, :] - reach - torch.arange(c, device=q.device)[:, None]
    in_band = (offset.abs() <= window) & ((offset <= 0) if causal else True)  # (c, span): key - query
    mask = in_band & ok[:, :, :, None, :]  # (B, 1|H, n_chunks, c, span)
    extra_keys = extra_values = None
    if globals_ is not None:
        extra_keys, extra_values, seen = globals_
        seen = F.pad(seen, (0, 0, 0, n_chunks * c - t)).view(b, -1, n_chunks, c, seen.size(-1))
        heads = max(mask.size(1), seen.size(1))
        mask = torch.cat([mask.expand(-1, heads, -1, -1, -1), seen.expand(-1, heads, -1, -1, -1)], dim=-1)
    if attend["backend"] == "sdpa":
        scale = d ** -0.5 if attend["scale"] is None else attend["scale"]
        out = _BandAttention.apply(q, k, v, extra_keys, extra_values, mask, c, reach, span, scale, attend["dropout_p"])
        return out.view(b, h, n_chunks * c, d)[:, :, :t]
    # the reference: the same spans, through plain autograd
    keys, values = (_windows(_padded_rows(x, n_chunks * c, reach, span - c - reach), b * h * n_chunks, span, c)
                    .view(b, h, n_chunks, span, d) for x in (k, v))
    if globals_ is not None:
        every_chunk = (-1, -1, n_chunks, -1, -1)
        keys = torch.cat([keys, extra_keys[:, :, None].expand(every_chunk)], dim=3)
        values = torch.cat([values, extra_values[:, :, None].expand(every_chunk)], dim=3)
    q_chunks = F.pad(q, (0, 0, 0, n_chunks * c - t)).view(b, h, n_chunks, c, d)
    out = block_attention(q_chunks, keys, values, mask, **attend)  # (B, H, n_chunks, c, D)
    return out.view(b, h, n_chunks * c, d)[:, :, :t]


def _padded_rows(x, rows_per_head, before, after):
    """(B, H, T, D) -> (before + B * H * rows_per_head + after, D): every head padded with zero
    rows to rows_per_head, the heads one after another, zero rows before and after them all."""
    x = F.pad(x, (0, 0, 0, rows_per_head - x.size(2))).reshape(-1, x.size(-1))
    return F.pad(x, (0, 0, before, after))


def _windows(rows, n, span, step):
    """(L, D) -> (n, span, D) view, no copy: window i is rows [i step, i step + span)."""
    d = rows.size(-1)
    return rows.as_strided((n, span, d), (step * d, d, 1))


class _BandAttention(torch.autograd.Function):
    """Sliding-window attention with the spans read in place: the heads' keys lie one after
    another in one padded block of rows, so every chunk's span is a view of it (a span reaching
    past its head's ends reads a neighbour's rows, which the mask hides). Batched matmuls read
    those overlapping views directly, so no copy of the keys per chunk is made or kept, and the
    backward adds the spans' gradients back into the rows in place. Global keys, if any, follow
    each span as `extra` keys.

    q, k, v (B, H, T, D); extra_keys/values (B, H, G, D) or None; mask (B, 1|H, n, c, span + G)
    -> (B, H, n, c, D)."""

    @staticmethod
    def forward(ctx, q, k, v, extra_keys, extra_values, mask, c, reach, span, scale, dropout_p):
        b, h, t, d = q.shape
        n = mask.size(2)
        rows = b * h * n  # one (c, span) attention per (batch, head, chunk)
        q_chunks = _padded_rows(q * scale, n * c, 0, 0).view(rows, c, d)
        k_rows, v_rows = (_padded_rows(x, n * c, reach, span - c - reach) for x in (k, v))
        scores = q_chunks @ _windows(k_rows, rows, span, c).transpose(1, 2)  # (rows, c, span)
        if extra_keys is not None:
            extra = q_chunks.view(b, h, n * c, d) @ extra_keys.transpose(-2, -1)  # (B, H, n c, G)
            scores = torch.cat([scores, extra.view(rows, c, -1)], dim=-1)
        probs, kept = _probabilities(scores.view(b, h, n, c, -1), mask, dropout_p)
        probs = probs.view(rows, c, -1)
        kept = None if kept is None else kept.view(rows, c, -1)
        weights = _weights(probs, kept, v.dtype)
        out = weights[..., :span] @ _windows(v_rows, rows, span, c)  # (rows, c, D)
        if extra_keys is not None:
            out += (weights[..., span:].reshape(b, h, n * c, -1) @ extra_values).view(rows, c, d)
        ctx.save_for_backward(q_chunks, k_rows, v_rows, extra_keys, extra_values, probs, kept, out)
        ctx.geometry = (b, h, t, n, c, reach, span, scale)
        return out.view(b, h, n, c, d)

    @staticmethod
    def backward(ctx, grad_out):
        q_chunks, k_rows, v_rows, extra_keys, extra_values, probs, kept, out = ctx.saved_tensors
        b, h, t, n, c, reach, span, scale = ctx.geometry
        rows, d = b * h * n, q_chunks.size(-1)
        grad_out = grad_out.reshape(rows, c, d)
        keys, values = _windows(k_rows, rows, span, c), _windows(v_rows, rows, span, c)
        weights = _weights(probs, kept, v_rows.dtype)
        grad_weights = grad_out @ values.transpose(1, 2)  # (rows, c, span)
        grad_v = _window_grad(weights[..., :span], grad_out, c)
        grad_extra_values = None
        if extra_keys is not None:
            by_head = grad_out.view(b, h, n * c, d)
            grad_weights = torch.cat([grad_weights, (by_head @ extra_values.transpose(-2, -1)).view(rows, c, -1)], -1)
            grad_extra_values = weights[..., span:].reshape(b, h, n * c, -1).transpose(-2, -1) @ by_head
        grad_scores = _scores_grad(grad_weights, probs, kept, grad_out, out).to(q_chunks.dtype)
        band = grad_scores[..., :span]
        grad_q = band @ keys
        grad_k = _window_grad(band, q_chunks, c)
        grad_extra_keys = None
        if extra_keys is not None:
            extra = grad_scores[..., span:].reshape(b, h, n * c, -1)
            grad_q += (extra @ extra_keys).view(rows, c, d)
            grad_extra_keys = extra.transpose(-2, -1) @ q_chunks.view(b, h, n * c, d)

        def unpad(x, before):  # rows of the padded layout -> (B, H, T, D)
            return x[before:before + rows * c].view(b, h, n * c, d)[:, :, :t]

        return (unpad(grad_q.mul_(scale).view(-1, d), 0), unpad(grad_k, reach), unpad(grad_v, reach),
                grad_extra_keys, grad_extra_values, None, None, None, None, None, None)


def _window_grad(grad_scores, x, step):
    """The gradient of the rows under `_windows(rows, n, span, step)` through products
    grad_scores^T @ x per window: grad_scores (n, c, span), x (n, c, D) -> (L, D). Added in place
    one step-wide slice of the span at a time, so no (n, span, D) temporary is made."""
    n, _, span = grad_scores.shape
    grad_rows = x.new_zeros(n + span // step - 1, step, x.size(-1))
    for shift in range(span // step):
        grad_rows[shift:shift + n].baddbmm_(grad_scores[..., shift * step:(shift + 1) * step].transpose(1, 2), x)
    return grad_rows.view(-1, x.size(-1))


def global_indices(global_mask):
    """(B, T) bool -> positions (B, G) of each row's global tokens in order, and (B, G) valid;
    rows with fewer than G global tokens are filled with other (invalid) positions."""
    counts = global_mask.sum(-1)
    order = torch.argsort((~global_mask).to(torch.int8), dim=-1, stable=True)
    g = int(counts.max())
    return order[:, :g], torch.arange(g, device=global_mask.device)[None, :] < counts[:, None]


def _gather_positions(x, idx):
    """x (B, H, T, D), idx (B, G) -> (B, H, G, D)."""
    return x.gather(2, idx[:, None, :, None].expand(-1, x.size(1), -1, x.size(-1)))


def global_query_attention(q_global, k, v, idx, valid, *, causal=False, key_mask=None, scale=None, dropout_p=0.0,
                           backend="sdpa"):
    """Full rows for the global queries: q_global (B, H, G, D) at positions idx (B, G) -> (B, H, G, D)."""
    t = k.size(2)
    seen = torch.ones(k.size(0), 1, 1, t, dtype=torch.bool, device=k.device)
    if key_mask is not None:
        seen = seen & key_mask.bool()[:, None, None, :]
    if causal:
        seen = seen & (torch.arange(t, device=k.device)[None, None, None, :] <= idx[:, None, :, None])
    out, _ = scaled_dot_product_attention(q_global, k, v, mask=seen, scale=scale, dropout_p=dropout_p, backend=backend)
    return out * valid[:, None, :, None]


def scatter_rows(out, rows, idx, valid):
    """Write rows (B, H, G, D) into out (B, H, T, D) at positions idx (B, G) where valid."""
    placed = out.scatter(2, idx[:, None, :, None].expand_as(rows), rows)
    is_global = torch.zeros(out.size(0), out.size(2), dtype=torch.bool, device=out.device)
    is_global = is_global.scatter(1, idx, valid)
    return torch.where(is_global[:, None, :, None], placed, out)


def sliding_window_mask(t, window, *, dilation=1, causal=False, key_mask=None, global_mask=None):
    """The dense boolean (B, 1, T, T) mask equal to the sliding-window pattern (for tests and the
    dense reference path; it is what the chunked code avoids building)."""
    pos = torch.arange(t)
    offset = pos[None, :] - pos[:, None]  # key - query
    band = (offset.abs() <= window * dilation) & (offset % dilation == 0)
    mask = band[None, None]
    if global_mask is not None:
        mask = mask | global_mask[:, None, None, :] | global_mask[:, None, :, None]
    if key_mask is not None:
        mask = mask & key_mask.bool()[:, None, None, :]
    if causal:
        mask = mask & causal_mask(t, t)
    return mask


class SlidingWindowAttention(MultiHeadAttention):
    """Multi-head sliding-window attention with optional global tokens.

    window: one-sided reach (Longformer's attention_window / 2). global_projections: separate
    q/k/v projections for the global rows (Longformer), else the global rows reuse q/k/v.
    With a KV cache (incremental decoding) it takes the dense path with the band mask: one new
    query against the cached keys costs O(T) either way. The global projections are compression
    targets beside the plain ones (q_global with "q", ...), and are sliced with them when heads
    are pruned.
    """

    projections = {"q": ("q_proj", "q_global"), "k": ("k_proj", "k_global"), "v": ("v_proj", "v_global"),
                   "o": ("out_proj",)}

    def __init__(self, d_model, n_head, window, *, dilation=1, causal=False, global_projections=False, bias=True,
                 dropout=0.0, backend="sdpa"):
        super().__init__(d_model, n_head, bias=bias, dropout=dropout, backend=backend)
        self.window, self.dilation, self.causal = window, dilation, causal
        if global_projections:
            self.q_global = nn.Linear(d_model, d_model, bias=bias)
            self.k_global = nn.Linear(d_model, d_model, bias=bias)
            self.v_global = nn.Linear(d_model, d_model, bias=bias)
        else:
            self.q_global = self.k_global = self.v_global = None

    def select_heads(self, keep):
        super().select_heads(keep)
        if not isinstance(self.dilation, int):
            self.dilation = [self.dilation[h] for h in keep.tolist()]

    def forward(self, x, *, mask=None, key_mask=None, causal=False, position_ids=None, cache=None, layer_idx=0,
                return_weights=False, global_mask=None, rotary=None, bias=None):
        """x (B, T, C); key_mask (B, T) bool; global_mask (B, T) bool; a (B, 1, 1, T) padding `mask`
        (a causal LM's) is folded into the key mask. No additive bias and no weights (never formed)."""
        if bias is not None or return_weights:
            raise ValueError("sliding-window attention takes no additive attention bias and returns no weights")
        causal = causal or self.causal
        key_mask = key_mask_from(mask, key_mask)  # (B, T_past + T)
        q, k, v = (self._heads(proj(x), self.n_head) for proj in (self.q_proj, self.k_proj, self.v_proj))
        if rotary is not None:
            q, k = rotary(q, position_ids), rotary(k, position_ids)
        if cache is not None:
            return self._merge(self._cached(q, k, v, cache, layer_idx, key_mask))
        dropout_p = self.dropout if self.training else 0.0
        out = sliding_window_attention(q, k, v, self.window, dilation=self.dilation, causal=causal,
                                       key_mask=key_mask, global_mask=global_mask, dropout_p=dropout_p,
                                       backend=self.backend)
        if global_mask is not None and global_mask.any():
            ok = global_mask if key_mask is None else global_mask & key_mask.bool()
            idx, valid = global_indices(ok)
            if self.q_global is not None:
                xg = x.gather(1, idx[:, :, None].expand(-1, -1, x.size(-1)))  # (B, G, C)
                qg = self._heads(self.q_global(xg), self.n_head)
                k, v = self._heads(self.k_global(x), self.n_head), self._heads(self.v_global(x), self.n_head)
            else:
                qg = _gather_positions(q, idx)
            rows = global_query_attention(qg, k, v, idx, valid, causal=causal, key_mask=key_mask, dropout_p=dropout_p,
                                          backend=self.backend)
            out = scatter_rows(out, rows, idx, valid)
        if key_mask is not None:
            out = out * key_mask.bool()[:, None, :, None]  # padding queries give zeros (as Longformer does)
        return self._merge(out)

    def _cached(self, q, k, v, cache, layer_idx, key_mask):
        k, v = cache.append(layer_idx, k, v)
        t_q, t_k = q.size(2), k.size(2)
        offset = torch.arange(t_k, device=q.device)[None, :] - (torch.arange(t_q, device=q.device)[:, None] + t_k - t_q)
        band = (offset <= 0) & (offset >= -self.window * self.dilation) & (offset % self.dilation == 0)
        mask = band if key_mask is None else band & key_mask.bool()[:, None, None, :]
        out, _ = scaled_dot_product_attention(q, k, v, mask=mask, backend=self.backend)
        return out


# -- BigBird block sparse -----------------------------------------------------------------------

def bigbird_random_blocks(n_blocks, n_random, n_head, seed):
    """(H, n_blocks - 2, r) random key blocks for query blocks 1 .. n_blocks - 2, drawn from a
    generator seeded with `seed`: never a global block (first, last) nor one of the 3 window blocks."""
    if n_random == 0:
        return torch.zeros(n_head, n_blocks - 2, 0, dtype=torch.long)
    if n_blocks < 5 + n_random:
        raise ValueError(f"{n_random} random blocks need at least {5 + n_random} blocks, got {n_blocks}")
    generator = torch.Generator().manual_seed(seed)
    rows = torch.arange(1, n_blocks - 1)[:, None]  # query blocks 1 .. nb-2
    cols = torch.arange(n_blocks)[None, :]
    allowed = ((cols - rows).abs() > 1) & (cols > 0) & (cols < n_blocks - 1)  # (nb - 2, nb)
    keys = torch.rand(n_head, n_blocks - 2, n_blocks, generator=generator).masked_fill(~allowed, -1.0)
    return keys.topk(n_random, dim=-1).indices  # (H, nb - 2, r)


def _block_table(n_blocks, random_blocks):
    """Key blocks of each middle query block: (H, nb - 2, 5 + r) indices and a (nb - 2, 5 + r)
    validity mask that drops the window slot repeating a global block (rows 1 and nb - 2)."""
    rows = torch.arange(1, n_blocks - 1)
    fixed = torch.stack([torch.zeros_like(rows), rows - 1, rows, rows + 1, torch.full_like(rows, n_blocks - 1)], -1)
    h = random_blocks.size(0)
    table = torch.cat([fixed.expand(h, -1, -1), random_blocks.to(fixed.device)], dim=-1)
    valid = torch.ones(n_blocks - 2, table.size(-1), dtype=torch.bool)
    valid[0, 1] = False  # row 1: window block 0 is the global block 0
    valid[-1, 3] = False  # row nb-2: window block nb-1 is the global last block
    return table, valid


def bigbird_attention(q, k, v, block_size, random_blocks, *, key_mask=None, scale=None, dropout_p=0.0,
                      backend="sdpa"):
    """Block-sparse attention -> (B, H, T, D); T must be a multiple of block_size.

    random_blocks (H, nb - 2, r) from `bigbird_random_blocks`. Padding queries give zeros.
    """
    b, h, t, d = q.shape
    if t % block_size:
        raise ValueError(f"sequence length {t} is not a multiple of block_size {block_size}")
    nb = t // block_size
    if nb < 3:
        raise ValueError(f"block-sparse attention needs at least 3 blocks, got {nb}")
    key_ok = torch.ones(b, t, dtype=torch.bool, device=q.device) if key_mask is None else key_mask.bool()

    # first and last query blocks are global: they see every key
    edge_q = torch.cat([q[:, :, :block_size], q[:, :, -block_size:]], dim=2)  # (B, H, 2 bs, D)
    edge_out = block_attention(edge_q, k, v, key_ok[:, None, None, :], scale=scale, dropout_p=dropout_p,
                               backend=backend)

    # middle query blocks: window + global + random key blocks
    table, valid = _block_table(nb, random_blocks)
    table, valid = table.to(q.device), valid.to(q.device)
    slots = table.size(-1)

    flat = (table + nb * torch.arange(h, device=q.device)[:, None, None]).flatten()  # into (H * nb) blocks

    def gather_blocks(x):  # (B, H', T, X) -> (B, H, nb - 2, slots * bs, X): whole blocks, copied row-wise
        blocks = x.expand(b, h, -1, -1).reshape(b, h * nb, block_size, x.size(-1))
        return blocks.index_select(1, flat).view(b, h, nb - 2, slots * block_size, x.size(-1))

    ok = gather_blocks(key_ok[:, None, :, None]).squeeze(-1)  # (B, H, nb - 2, slots * bs)
    ok = ok & valid.repeat_interleave(block_size, dim=-1)
    rows = h * (nb - 2)  # every (head, query block) pair is one attention call
    q_mid = q[:, :, block_size:-block_size].reshape(b, rows, block_size, d)
    mid_out = block_attention(q_mid, gather_blocks(k).reshape(b, rows, -1, d), gather_blocks(v).reshape(b, rows, -1, d),
                              ok.reshape(b, rows, 1, -1), scale=scale, dropout_p=dropout_p, backend=backend)
    mid_out = mid_out.reshape(b, h, (nb - 2) * block_size, d)

    out = torch.cat([edge_out[:, :, :block_size], mid_out, edge_out[:, :, block_size:]], dim=2)
    return out * key_ok[:, None, :, None]


def bigbird_mask(t, block_size, random_blocks, key_mask=None):
    """The dense (B|1, H, T, T) boolean mask equal to the block-sparse pattern (tests, reference)."""
    nb = t // block_size
    h = random_blocks.size(0)
    blocks = torch.zeros(h, nb, nb, dtype=torch.bool)
    blocks[:, [0, -1], :] = True
    blocks[:, :, [0, -1]] = True
    i = torch.arange(nb)
    for shift in (-1, 0, 1):
        j = (i + shift).clamp(0, nb - 1)
        blocks[:, i, j] = True
    if random_blocks.size(-1):
        blocks.scatter_(2, F.pad(random_blocks, (0, 0, 1, 1)), True)  # rows 0 / nb-1 padded with block 0
    mask = blocks.repeat_interleave(block_size, 1).repeat_interleave(block_size, 2)[None]  # (1, H, T, T)
    if key_mask is not None:
        ok = key_mask.bool()
        mask = mask & ok[:, None, None, :] & ok[:, None, :, None]
    return mask


class BigBirdAttention(MultiHeadAttention):
    """Multi-head block-sparse attention; the random blocks are drawn afresh for each sequence
    length from a generator seeded with `seed`, so a model is deterministic. Heads cannot be
    pruned: the random blocks are drawn for all heads at once, so removing one would re-draw the
    pattern of every other head."""

    prunable_heads = False

    def __init__(self, d_model, n_head, block_size, n_random, seed=0, bias=True, dropout=0.0, backend="sdpa"):
        super().__init__(d_model, n_head, bias=bias, dropout=dropout, backend=backend)
        self.block_size, self.n_random, self.seed = block_size, n_random, seed

    def random_blocks(self, t):
        return bigbird_random_blocks(t // self.block_size, self.n_random, self.n_head, self.seed)

    def forward(self, x, *, mask=None, key_mask=None, causal=False, position_ids=None, cache=None, layer_idx=0,
                return_weights=False, bias=None, rotary=None):
        """x (B, T, C); key_mask (B, T) bool, or a (B, 1, 1, T) padding `mask`. position_ids and
        layer_idx are not used."""
        if causal or bias is not None or rotary is not None or cache is not None or return_weights:
            raise ValueError("block-sparse attention is bidirectional: no causal mask, bias, rotary, KV cache or "
                             "weights")
        key_mask = key_mask_from(mask, key_mask)
        q, k, v = (self._heads(proj(x), self.n_head) for proj in (self.q_proj, self.k_proj, self.v_proj))
        out = bigbird_attention(q, k, v, self.block_size, self.random_blocks(x.size(1)), key_mask=key_mask,
                                dropout_p=self.dropout if self.training else 0.0, backend=self.backend)
        return self._merge(out)
