"""Position-wise feed-forward: plain (ReLU, GELU, quick GELU) or gated (SwiGLU, GeGLU)."""

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),  # CLIP's sigmoid approximation of GELU
}
# name -> (activation, gated)
FFN_KINDS = {
    "relu": ("relu", False),
    "gelu": ("gelu", False),
    "gelu_tanh": ("gelu_tanh", False),
    "silu": ("silu", False),
    "quick_gelu": ("quick_gelu", False),
    "swiglu": ("silu", True),
    "geglu": ("gelu_tanh", True),
    "reglu": ("relu", True),
}


def activation_of(kind: str):
    """The elementwise activation of an FFN kind (of its gate, when gated)."""
    return ACTIVATIONS[FFN_KINDS[kind][0]]


class FeedForward(nn.Module):
    """up -> activation (times gate, if gated) -> dropout -> down.

    `projections` names its linears for compression (the "ffn" target), as attention layers do."""

    projections = {"ffn": ("up", "gate", "down")}
    pruned = False  # set once neurons were removed (compression/structure.py records the width)

    def __init__(self, d_model: int, hidden: int, kind: str = "gelu", bias: bool = True, dropout: float = 0.0):
        super().__init__()
        if kind not in FFN_KINDS:
            raise ValueError(f"unknown feed-forward activation {kind!r}; choose one of {tuple(FFN_KINDS)}")
        activation, gated = FFN_KINDS[kind]
        self.activation = ACTIVATIONS[activation]
        self.up = nn.Linear(d_model, hidden, bias=bias)
        self.gate = nn.Linear(d_model, hidden, bias=bias) if gated else None
        self.down = nn.Linear(hidden, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        if self.gate is None:
            h = self.activation(self.up(x))
        else:
            h = self.activation(self.gate(x)) * self.up(x)
        return self.down(self.dropout(h))


class ChunkedFeedForward(nn.Module):
    """Norm -> FeedForward -> dropout, applied `chunk_size` positions at a time (0 = all at
    once), so the (T, hidden) activation never exists for the whole sequence (Reformer)."""

    def __init__(self, norm: nn.Module, ffn: FeedForward, chunk_size: int = 0, dropout: float = 0.0):
        super().__init__()
        self.norm, self.ffn = norm, ffn
        self.chunk_size = chunk_size
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):  # (B, T, C)
        if not self.chunk_size or x.size(1) <= self.chunk_size:
            return self.dropout(self.ffn(self.norm(x)))
        return torch.cat([self.dropout(self.ffn(self.norm(part))) for part in x.split(self.chunk_size, dim=1)], dim=1)
