"""Which linear layers compression acts on, chosen by short names.

q, k, v, o and ffn name the projections of every attention layer (`AttentionBase`) and
feed-forward layer (`FeedForward`); in and ssm those of a state-space mixer (Mamba's in_proj, and
its selection projections x_proj and dt_proj; its out_proj is an "o"); the message-passing layers
of layers/graph.py use q, k, v and o too. Each layer class declares
its own in a `projections` table (target -> attribute names), and any module whose class has
one is enrolled, so a new layer enrols itself by declaring it: the plain q_proj, k_proj,
v_proj, out_proj; the Reformer's shared qk_proj under both q and k; Transformer-XL's distance
projection r_proj under k (the paper's key projection of positions); Longformer's q_global,
k_global, v_global under q, k, v. Heads outside the blocks (LM head, classifier, pooler) are left
alone: they are small, often tied, and sensitive.
"""

from torch import nn

from ..errors import UserError

ALL_TARGETS = ("q", "k", "v", "o", "ffn", "in", "ssm")


def parse_targets(targets) -> tuple:
    """"q,v" or ["q", "v"] -> ("q", "v"), checked against ALL_TARGETS."""
    if isinstance(targets, str):
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    unknown = sorted(set(targets) - set(ALL_TARGETS))
    if unknown or not targets:
        raise UserError(f"unknown target module(s) {', '.join(unknown) or '(none given)'}; "
                        f"choose from {', '.join(ALL_TARGETS)}")
    return tuple(t for t in ALL_TARGETS if t in targets)


def projections_of(layer: nn.Module, targets=ALL_TARGETS) -> dict:
    """{attribute: module} of an enrolled layer's projections named by `targets`, in the layer's
    order; a projection serving two targets (qk_proj) appears once, an absent one (None) not at all."""
    wanted = {name for target in targets for name in type(layer).projections.get(target, ())}
    return {name: child for name, child in layer.named_children() if name in wanted}


def enrolled(module: nn.Module) -> bool:
    """Whether the module's class declares a `projections` table."""
    return isinstance(getattr(type(module), "projections", None), dict)


def find_linears(model: nn.Module, targets=ALL_TARGETS, kind=nn.Linear) -> list:
    """[(qualified name, parent, attribute, linear)] for the targeted block projections."""
    targets = parse_targets(targets)
    found = []
    for parent_name, parent in model.named_modules():
        if not enrolled(parent):
            continue
        for attribute, child in projections_of(parent, targets).items():
            if isinstance(child, kind):
                found.append((f"{parent_name}.{attribute}" if parent_name else attribute, parent, attribute, child))
    return found
