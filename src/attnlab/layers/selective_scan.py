"""The selective state-space layer of Mamba (Gu & Dao 2023, "Linear-time sequence modeling with
selective state spaces"), its three scans, and its fixed-size decode state.

For each inner channel d and state index n, with input-dependent delta_t (D,), B_t (N,), C_t (N,)
and a fixed negative A (D, N), zero-order-hold discretisation gives

    h_t = exp(delta_t A) * h_{t-1} + (delta_t x_t) B_t        h (B, D, N)
    y_t = C_t . h_t + D_skip * x_t

Three scans compute the states h_1..h_T from (decay, inputs) = (exp(delta A), delta B x) and agree
to rounding (tests/layers/test_selective_scan.py, float64, values and gradients):

- `scan_sequential`: the recurrence as written, one step per token (the reference);
- `scan_chunked`: chunks of L ~ sqrt(T) tokens: the recurrence runs inside all chunks at once
  (L steps), then once over chunk ends (T / L steps), and each chunk's states are corrected by
  its incoming state times the cumulative decay (a product of factors <= 1, so nothing
  overflows) -- about 2 sqrt(T) Python steps instead of T;
- `scan_associative`: Hillis-Steele doubling over the associative operator
  (a1, b1) o (a2, b2) = (a1 a2, a2 b1 + b2), log2 T steps of O(T) work each.
Which is fastest is measured in benchmarks/mamba_scan.py (RESULTS.md, issue 19): on this CPU the
sequential loop, since each step is one small multiply-add and the parallel forms move more
memory; it is the default, the others are a config choice (`scan`).

Fed one token, `SelectiveSSM` takes the one-token recurrence (`_step`) used for generation: it
reads and writes the layer's conv window (B, D, K-1) and state (B, D, N), so memory per token is
constant.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .decode_state import DecodeState, KVCache

SCANS = ("sequential", "chunked", "associative")


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


def _discretised(scan):
    """A scan over (decay, inputs) as one over (x, delta, A, B)."""
    return lambda x, delta, A, B, h0: scan(*discretise(x, delta, A, B), h0)


# the layer's scans: (x, delta (B, T, D), A (D, N), B (B, T, N), h0 (B, D, N)) -> states (B, T, D, N)
SCAN_FUNCTIONS = {"sequential": _discretised(scan_sequential),
                  "chunked": _discretised(scan_chunked), "associative": _discretised(scan_associative)}


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
                 bias: bool = False, conv_bias: bool = True, scan: str = "sequential", selective: bool = True):
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
            states = self.scan(u, delta, A, B, ssm_state)  # (B, T, D, N)
            y, h = (states @ C[..., None]).squeeze(-1), states[:, -1]  # (B, T, D)
        y = (y + u * self.D) * F.silu(z)
        return self.out_proj(y), window[:, :, window.size(2) - (self.d_conv - 1):], h

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
