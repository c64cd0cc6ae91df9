"""Which linear layers compression acts on, chosen by short names.

Every family is built from the shared layers, so the same names reach every model:
q, k, v, o are the projections of each `MultiHeadAttention` (q_proj, k_proj, v_proj, out_proj)
and ffn is the up/gate/down of each `FeedForward`. Heads outside the blocks (LM head,
classifier, pooler) are left alone: they are small, often tied, and sensitive.
"""

from torch import nn

from ..errors import UserError
from ..layers.attention import MultiHeadAttention
from ..layers.feedforward import FeedForward

TARGETS = {"q": ("q_proj",), "k": ("k_proj",), "v": ("v_proj",), "o": ("out_proj",), "ffn": ("up", "gate", "down")}
ALL_TARGETS = tuple(TARGETS)


def parse_targets(targets) -> tuple:
    """"q,v" or ["q", "v"] -> ("q", "v"), checked against TARGETS."""
    if isinstance(targets, str):
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown or not targets:
        raise UserError(f"unknown target module(s) {', '.join(unknown) or '(none given)'}; "
                        f"choose from {', '.join(TARGETS)}")
    return tuple(t for t in TARGETS if t in targets)


def find_linears(model: nn.Module, targets=ALL_TARGETS, kind=nn.Linear):
    """[(qualified name, parent, attribute, linear)] for the targeted block projections."""
    attributes = {a for t in parse_targets(targets) for a in TARGETS[t]}
    found = []
    for parent_name, parent in model.named_modules():
        if not isinstance(parent, (MultiHeadAttention, FeedForward)):
            continue
        for attribute, child in parent.named_children():
            if attribute in attributes and isinstance(child, kind):
                found.append((f"{parent_name}.{attribute}" if parent_name else attribute, parent, attribute, child))
    return found
