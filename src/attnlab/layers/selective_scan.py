"""The selective state-space layer of Mamba (Gu & Dao 2023, "Linear-time sequence modeling with
selective state spaces"), its four scans, and its fixed-size decode state.

For each inner channel d and state index n, with input-dependent delta_t (D,), B_t (N,), C_t (N,)
and a fixed negative A (D, N), zero-order-hold discretisation gives

    h_t = exp(delta_t A) * h_{t-1} + (delta_t x_t) B_t        h (B, D, N)
    y_t = C_t . h_t + D_skip * x_t

Four scans compute the outputs y and the last state from (x, delta, A, B, C) and agree to
rounding (tests/layers/test_selective_scan.py, float64, values and gradients):

- `scan_fused` (the default): the recurrence one token at a time with discretisation and output
  fused in and its backward written out, so that only the states are ever (B, T, D, N);
- the three below work on (decay, inputs) = (exp(delta A), delta B x), built over (B, T, D, N),
  and leave the gradients to autograd;
- `scan_sequential`: the recurrence as written, one step per token (the reference);
- `scan_chunked`: chunks of L ~ sqrt(T) tokens: the recurrence runs inside all chunks at once
  (L steps), then once over chunk ends (T / L steps), and each chunk's states are corrected by
  its incoming state times the cumulative decay (a product of factors <= 1, so nothing
  overflows) -- about 2 sqrt(T) Python steps instead of T;
- `scan_associative`: Hillis-Steele doubling over the associative operator
  (a1, b1) o (a2, b2) = (a1 a2, a2 b1 + b2), log2 T steps of O(T) work each.
Which is fastest is measured in benchmarks/mamba_scan.py (RESULTS.md, issue 19): on this CPU the
fused loop. Its steps are a handful of small ops on a (B, D, N) block that stays in cache, while
each full-size op of the others streams the whole (B, T, D, N) tensor through memory; the
parallel forms move more memory still. The others are a config choice (`scan`).

Fed one token, `SelectiveSSM` takes the one-token recurrence (`_step`) used for generation: it
reads and writes the layer's conv window (B, D, K-1) and state (B, D, N), so memory per token is
constant.
"""

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from .decode_state import DecodeState, KVCache


def discretise(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor):
    """x, delta (B, T, D); A (D, N); B (B, T, N) -> decay exp(delta A), inputs delta B x: each (B, T, D, N)."""
    decay = torch.exp(delta[..., None] * A)
    inputs = (delta * x)[..., None] * B[:, :, None, :]
    return decay, inputs


def scan_sequential(decay: torch.Tensor, inputs: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """decay, inputs (B, T, D, N); h0 (B, D, N) -> states h_1..h_T (B, T, D, N)."""
    h, states = h0, []
    for a_t, b_t in zip(decay.unbind(1), inputs.unbind(1)):  # unbind: one backward op, not T slices
        h = a_t * h + b_t
        states.append(h)
    return torch.stack(states, dim=1)


def scan_chunked(decay: torch.Tensor, inputs: torch.Tensor, h0: torch.Tensor, chunk: int = None) -> torch.Tensor:
    """As scan_sequential, in chunks of `chunk` tokens (default ceil(sqrt(T)))."""
    b, t, d, n = decay.shape
    chunk = chunk or max(1, math.ceil(math.sqrt(t)))
    pad = -t % chunk
    if pad:  # decay 1 and input 0 leave the state as it is
        decay = torch.cat([decay, decay.new_ones(b, pad, d, n)], dim=1)
        inputs = torch.cat([inputs, inputs.new_zeros(b, pad, d, n)], dim=1)
    decay = decay.view(b, -1, chunk, d, n)  # (B, K, L, D, N)
    inputs = inputs.view(b, -1, chunk, d, n)
    local = _within_chunks(decay, inputs)
    prefix = torch.cumprod(decay, dim=2)  # (B, K, L, D, N): decay from the chunk's start to each token
    incoming, h = [], h0
    for end_decay, end_state in zip(prefix[:, :, -1].unbind(1), local[:, :, -1].unbind(1)):  # state into each chunk
        incoming.append(h)
        h = end_decay * h + end_state
    states = local + prefix * torch.stack(incoming, dim=1)[:, :, None]
    return states.view(b, -1, d, n)[:, :t]


def _within_chunks(decay: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """(B, K, L, D, N) each -> the states of every chunk started from zero, (B, K, L, D, N)."""
    h, states = torch.zeros_like(inputs[:, :, 0]), []
    for a_t, b_t in zip(decay.unbind(2), inputs.unbind(2)):
        h = a_t * h + b_t
        states.append(h)
    return torch.stack(states, dim=2)


def scan_associative(decay: torch.Tensor, inputs: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """As scan_sequential, by log2(T) doubling steps (Hillis-Steele)."""
    b = torch.cat([inputs[:, :1] + decay[:, :1] * h0[:, None], inputs[:, 1:]], dim=1)  # h0 folded into step 1
    a, offset = decay, 1
    while offset < decay.size(1):
        b = torch.cat([b[:, :offset], a[:, offset:] * b[:, :-offset] + b[:, offset:]], dim=1)
        a = torch.cat([a[:, :offset], a[:, offset:] * a[:, :-offset]], dim=1)
        offset *= 2
    return b


class _FusedScan(torch.autograd.Function):
    """The recurrence one token at a time with discretisation and output fused in, and the
    backward written out, so that no (B, T, D, N) tensor is made but the states themselves.
    The other scans build decay and inputs over (B, T, D, N) and let autograd trace them: each
    full-size elementwise op streams tens of MB through memory (and faults fresh pages in), while
    a token's (B, D, N) block stays in cache (RESULTS.md, issue 19). Time-major, so that each
    token's block is contiguous. Forward:

        a_t = exp(delta_t A);  h_t = a_t * h_{t-1} + (delta_t x_t) B_t;  y_t = C_t . h_t

    Backward, in reverse, with g = dL/dh_t in total (g_t = dy_t C_t + a_{t+1} g_{t+1}): the
    gradient of (delta_t x_t) B_t is g_t and that of delta_t A is g_t * h_{t-1} * a_t, each
    reduced to its inputs' gradients within the token's step."""

    @staticmethod
    def forward(ctx, x, delta, A, B, C, h0):
        delta_t, dx_t = delta.transpose(0, 1).contiguous(), (delta * x).transpose(0, 1).contiguous()  # (T, B, D)
        B_t, C_t = B.transpose(0, 1).contiguous(), C.transpose(0, 1).contiguous()  # (T, B, N)
        states, y = x.new_empty(x.size(1), *h0.shape), torch.empty_like(dx_t)  # (T, B, D, N), (T, B, D)
        h = h0
        for t in range(states.size(0)):
            torch.mul(delta_t[t, :, :, None], A, out=states[t])
            h = states[t].exp_().mul_(h).addcmul_(dx_t[t, :, :, None], B_t[t, :, None, :])
            torch.bmm(h, C_t[t, :, :, None], out=y[t, :, :, None])
        ctx.save_for_backward(x, delta_t, dx_t, A, B_t, C_t, h0, states)
        return y.transpose(0, 1), h.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y, grad_last):
        x, delta_t, dx_t, A, B_t, C_t, h0, states = ctx.saved_tensors
        grad_y = grad_y.transpose(0, 1).contiguous()  # (T, B, D)
        g = grad_last.clone() if grad_last is not None else torch.zeros_like(h0)  # dL/dh_t, (B, D, N)
        grad_dx, grad_delta = torch.empty_like(dx_t), torch.empty_like(delta_t)  # (T, B, D)
        grad_B, grad_C = torch.empty_like(B_t), torch.empty_like(C_t)  # (T, B, N)
        grad_A = torch.zeros_like(h0)  # summed over the batch at the end
        decay, grad_log_decay, scratch = torch.empty_like(h0), torch.empty_like(h0), torch.empty_like(h0)
        for t in range(states.size(0) - 1, -1, -1):
            torch.bmm(grad_y[t, :, None, :], states[t], out=grad_C[t, :, None, :])
            g.addcmul_(grad_y[t, :, :, None], C_t[t, :, None, :])
            torch.bmm(g, B_t[t, :, :, None], out=grad_dx[t, :, :, None])
            torch.bmm(dx_t[t, :, None, :], g, out=grad_B[t, :, None, :])
            torch.mul(delta_t[t, :, :, None], A, out=decay).exp_()
            torch.mul(g, states[t - 1] if t else h0, out=grad_log_decay).mul_(decay)  # dL/d(delta_t A)
            torch.sum(torch.mul(grad_log_decay, A, out=scratch), -1, out=grad_delta[t])
            grad_A.addcmul_(grad_log_decay, delta_t[t, :, :, None])
            g.mul_(decay)  # dL/dh_{t-1}
        grad_delta.addcmul_(grad_dx, x.transpose(0, 1))
        grad_x = grad_dx.mul_(delta_t)
        return (grad_x.transpose(0, 1), grad_delta.transpose(0, 1), grad_A.sum(0), grad_B.transpose(0, 1),
                grad_C.transpose(0, 1), g)


def scan_fused(x, delta, A, B, C, h0):
    """x, delta (B, T, D); A (D, N); B, C (B, T, N); h0 (B, D, N) -> y (B, T, D), h_T (B, D, N),
    computed in the widest of the inputs' dtypes (float32 A keeps a bf16 autocast run's scan in float32)."""
    inputs = (x, delta, A, B, C, h0)
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in inputs))
    return _FusedScan.apply(*(t.to(dtype) for t in inputs))


def _from_states(scan):
    """A scan over (decay, inputs) -> states as one over (x, delta, A, B, C, h0) -> (y, h_T)."""
    def outputs(x, delta, A, B, C, h0):
        states = scan(*discretise(x, delta, A, B), h0)  # (B, T, D, N)
        return (states @ C[..., None]).squeeze(-1), states[:, -1]
    return outputs


# the layer's scans: (x, delta (B, T, D), A (D, N), B, C (B, T, N), h0 (B, D, N)) -> y (B, T, D), h_T (B, D, N)
SCAN_FUNCTIONS = {"fused": scan_fused, "sequential": _from_states(scan_sequential),
                  "chunked": _from_states(scan_chunked), "associative": _from_states(scan_associative)}
SCANS = tuple(SCAN_FUNCTIONS)


class SSMState(DecodeState):
    """What a Mamba model keeps between decoding steps: per SSM layer its conv window (B, D, K-1)
    (the last K-1 inputs of the causal conv) and its state h (B, D, N); for a hybrid, a KVCache for
    its attention layers. Without attention layers it is fixed in size (recurrent) and holds no
    columns: its mask is (B, 0), and rows are independent, so extend is a concatenation."""

    def __init__(self, conv: list, ssm: list, kv: KVCache = None):
        self.conv, self.ssm, self.kv = conv, ssm, kv
        self._rows = conv[0].size(0) if conv else kv.mask.size(0)
        self._empty = torch.zeros(self._rows, 0, dtype=torch.long, device=(conv[0] if conv else kv.mask).device)

    @property
    def recurrent(self) -> bool:
        return self.kv is None

    @property
    def mask(self) -> torch.Tensor:
        return self._empty if self.kv is None else self.kv.mask

    def select(self, rows: torch.Tensor) -> None:
        self.conv = [c[rows] for c in self.conv]
        self.ssm = [s[rows] for s in self.ssm]
        self._empty = self._empty[rows]
        if self.kv is not None:
            self.kv.select(rows)

    def extend(self, other: "SSMState") -> None:
        self.conv = [torch.cat([a, b]) for a, b in zip(self.conv, other.conv)]
        self.ssm = [torch.cat([a, b]) for a, b in zip(self.ssm, other.ssm)]
        self._empty = torch.cat([self._empty, other._empty])
        if self.kv is not None:
            self.kv.extend(other.kv)

    def trim(self) -> None:
        if self.kv is not None:
            self.kv.trim()


class SelectiveSSM(nn.Module):
    """Mamba's mixer: in_proj to x and gate z, causal depthwise conv1d + SiLU on x, selection
    projections (delta low rank through dt_proj + softplus, B, C), the scan, the D skip, the SiLU
    gate, out_proj. `selective=False` is the ablation with input-independent delta, B, C (learned
    vectors instead of x_proj): a linear time-invariant SSM.

    `projections` declares its linears to compression (compression/targets.py): "in" the input
    projection, "ssm" the selection projections, "o" the output projection.
    """

    projections = {"in": ("in_proj",), "ssm": ("x_proj", "dt_proj"), "o": ("out_proj",)}

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank: int = None,
                 bias: bool = False, conv_bias: bool = True, scan: str = "fused", selective: bool = True):
        super().__init__()
        self.d_inner, self.d_state, self.d_conv = expand * d_model, d_state, d_conv
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        self.scan = SCAN_FUNCTIONS[scan]
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, bias=conv_bias)
        width = self.dt_rank + 2 * d_state
        if selective:
            self.x_proj = nn.Linear(self.d_inner, width, bias=False)
        else:
            self.selection = nn.Parameter(torch.randn(width) / math.sqrt(self.d_inner))
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def init_dt(self, dt_min: float = 1e-3, dt_max: float = 0.1, floor: float = 1e-4):
        """Mamba's delta initialisation: softplus(dt_proj bias) log-uniform in [dt_min, dt_max]."""
        with torch.no_grad():
            std = self.dt_rank ** -0.5
            self.dt_proj.weight.uniform_(-std, std)
            dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            dt = dt.clamp(min=floor)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # the inverse of softplus

    def new_state(self, batch: int, device=None, dtype=None):
        """-> zero (conv window (B, D, K-1), ssm state (B, D, N))."""
        return (torch.zeros(batch, self.d_inner, self.d_conv - 1, device=device, dtype=dtype),
                torch.zeros(batch, self.d_inner, self.d_state, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, mask: torch.Tensor = None, conv_state=None, ssm_state=None):
        """x (B, T, C); mask (B, T) 1 for real tokens, 0 for left padding (padding leaves the state
        untouched, so a left-padded row equals the row alone); conv_state (B, D, K-1) and ssm_state
        (B, D, N) continue earlier tokens (None: start from zeros).
        -> (out (B, T, C), conv_state, ssm_state) after the last token."""
        u, z = self.in_proj(x).chunk(2, dim=-1)  # (B, T, D) each
        if mask is not None:
            u = u * mask[..., None]
        if conv_state is None:
            conv_state, ssm_state = self.new_state(x.size(0), x.device, u.dtype)
        window = torch.cat([conv_state, u.transpose(1, 2)], dim=2)  # (B, D, K-1 + T)
        u = F.silu(self._conv(window)).transpose(1, 2)  # (B, T, D)
        if mask is not None:
            u = u * mask[..., None]
        delta, B, C = self._selection(u)
        if mask is not None:
            delta = delta * mask[..., None]  # delta 0: decay 1 and no input, the state skips padding
        A = -torch.exp(self.A_log)  # (D, N)
        if x.size(1) == 1:
            y, h = self._step(u[:, 0], delta[:, 0], A, B[:, 0], C[:, 0], ssm_state)
            y = y[:, None]
        else:
            y, h = self.scan(u, delta, A, B, C, ssm_state)  # (B, T, D), (B, D, N)
        y = (y + u * self.D) * F.silu(z)
        # contiguous: the state keeps one layout, so a compiled step sees the same strides every token
        return self.out_proj(y), window[:, :, window.size(2) - (self.d_conv - 1):].contiguous(), h

    def _conv(self, window: torch.Tensor) -> torch.Tensor:
        """The causal depthwise conv over window (B, D, K-1 + T) -> (B, D, T); for one token a
        multiply-add over its K inputs, which on a CPU costs a fraction of a conv1d call."""
        if window.size(2) > self.d_conv:
            return F.conv1d(window, self.conv1d.weight, self.conv1d.bias, groups=self.d_inner)
        out = (window * self.conv1d.weight[:, 0]).sum(-1, keepdim=True)
        return out if self.conv1d.bias is None else out + self.conv1d.bias[:, None]

    def _selection(self, u: torch.Tensor):
        """u (B, T, D) -> delta (B, T, D) > 0, B (B, T, N), C (B, T, N)."""
        selected = self.x_proj(u) if hasattr(self, "x_proj") else self.selection.expand(*u.shape[:2], -1)
        low_rank, B, C = selected.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        return F.softplus(self.dt_proj(low_rank)), B, C

    @staticmethod
    def _step(u, delta, A, B, C, h):
        """One token: u, delta (B, D); A (D, N); B, C (B, N); h (B, D, N) -> y (B, D), h."""
        h = torch.exp(delta[..., None] * A) * h + (delta * u)[..., None] * B[:, None]
        return (h @ C[..., None]).squeeze(-1), h
