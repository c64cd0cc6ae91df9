"""Key maps: how an attnlab state dict and a Hugging Face state dict name the same weights.

A `Rule` ties one or more of our tensors to one or more of theirs, with a transform each way
(a plain rename has none; GPT-2's fused, transposed `c_attn` splits into our q, k, v). A
`KeyMap` is a family's list of rules plus patterns for their tensors that carry no weights
(buffers, tied copies). Converting checks everything at once and names every missing,
unexpected or mis-shaped tensor in one `UserError`.
"""

import dataclasses
import re
from typing import Callable

import torch

from ..errors import UserError


def _same(tensors):
    return tensors


@dataclasses.dataclass(frozen=True)
class Rule:
    ours: tuple
    theirs: tuple
    to_ours: Callable = _same  # their tensors (in `theirs` order) -> ours (in `ours` order)
    to_theirs: Callable = _same
    optional: bool = False  # their file may leave it out (a weight tied to another)


def rename(ours: str, theirs: str, optional=False) -> Rule:
    return Rule((ours,), (theirs,), optional=optional)


def affine(ours: str, theirs: str) -> list:
    """weight and bias of a Linear or LayerNorm under two prefixes."""
    return [rename(f"{ours}.{p}", f"{theirs}.{p}") for p in ("weight", "bias")]


def transposed(ours: str, theirs: str) -> list:
    """A GPT-2 Conv1D (weight stored as (in, out)) <-> our Linear (out, in)."""
    flip = lambda ts: tuple(t.t() for t in ts)  # noqa: E731
    return [Rule((f"{ours}.weight",), (f"{theirs}.weight",), flip, flip), rename(f"{ours}.bias", f"{theirs}.bias")]


def fused_qkv(ours_q: str, ours_k: str, ours_v: str, theirs: str) -> list:
    """A fused Conv1D (in, 3 * out) <-> three Linears q, k, v of shape (out, in)."""
    def split_weight(ts):
        return tuple(w.t() for w in ts[0].chunk(3, dim=1))

    def join_weight(ts):
        return (torch.cat([w.t() for w in ts], dim=1),)

    def split_bias(ts):
        return tuple(ts[0].chunk(3))

    def join_bias(ts):
        return (torch.cat(ts),)

    names = (ours_q, ours_k, ours_v)
    return [Rule(tuple(f"{n}.weight" for n in names), (f"{theirs}.weight",), split_weight, join_weight),
            Rule(tuple(f"{n}.bias" for n in names), (f"{theirs}.bias",), split_bias, join_bias)]


class KeyMap:
    def __init__(self, rules, ignore=()):
        self.rules = list(rules)
        self.ignore = [re.compile(p) for p in ignore]

    def to_ours(self, theirs: dict, expected: dict, source: str) -> dict:
        """Their state dict -> ours. `expected` maps our names to tensors of the right shape."""
        ours, used, missing, misshaped = {}, set(), [], []
        for rule in self.rules:
            absent = [name for name in rule.theirs if name not in theirs]
            if rule.optional:  # a tied copy: our tie restores it, whatever the file holds
                used.update(name for name in rule.theirs if name in theirs)
                continue
            if absent:
                missing += absent
                continue
            used.update(rule.theirs)
            converted = rule.to_ours(tuple(theirs[name] for name in rule.theirs))
            for name, tensor in zip(rule.ours, converted):
                want = expected[name].shape
                if tensor.shape != want:
                    misshaped.append(f"{'+'.join(rule.theirs)} {tuple(tensor.shape)}, expected {tuple(want)}")
                ours[name] = tensor
        unexpected = [name for name in theirs if name not in used and not self._ignored(name)]
        _raise_problems(source, missing, unexpected, misshaped)
        return ours

    def to_theirs(self, ours: dict, source: str) -> dict:
        """Our state dict -> theirs; every weight of ours must have a place."""
        theirs, used = {}, set()
        for rule in self.rules:
            if rule.optional:  # tied: the loader restores it from the weight it is tied to
                used.update(rule.ours)
                continue
            converted = rule.to_theirs(tuple(ours[name] for name in rule.ours))
            theirs.update(zip(rule.theirs, (t.detach().contiguous().clone() for t in converted)))
            used.update(rule.ours)
        homeless = [name for name in ours if name not in used]
        if homeless:
            raise UserError(f"{source}: no Hugging Face tensor for {_listing(homeless)}; "
                            "this configuration has no Hugging Face equivalent")
        return theirs

    def _ignored(self, name):
        return any(p.fullmatch(name) for p in self.ignore)


def _listing(items, limit=8):
    items = sorted(items)
    return ", ".join(items[:limit]) + (f" ... ({len(items)} in all)" if len(items) > limit else "")


def _raise_problems(source, missing, unexpected, misshaped):
    problems = [f"{label}: {_listing(items)}" for label, items in
                (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)) if items]
    if problems:
        raise UserError(f"{source} does not fit: {'; '.join(problems)}. "
                        "Check that config.json describes these weights (and that the file is complete)")
