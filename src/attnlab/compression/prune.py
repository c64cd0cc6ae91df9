"""Pruning: unstructured (global magnitude) and structured (attention heads, FFN neurons).

Unstructured pruning zeroes the smallest weights across all targeted projections at once.
The tensors stay dense, so the model is neither smaller on disk nor faster with ordinary
kernels; `sparsity_report` says exactly how many weights are zero, of what.

Structured pruning removes whole attention heads and feed-forward neurons ranked by
importance, slicing the projection matrices, so parameter counts, sizes and latency really
shrink. It works on every attention layer that declares `prunable_heads` (the layer's
`projections` table says which matrices to slice; `select_heads` slices its own per-head
state, such as Transformer-XL's global biases). Each attention layer then carries its own head
count (`n_head`), and checkpoints record the per-layer shapes (see compression/structure.py)
so a pruned model reloads.

Importance: "taylor" sums |weight * gradient| over a few batches (first-order estimate of the
loss change when the unit is removed, Molchanov et al. 2017 / Michel et al. 2019); "magnitude"
sums |weight| and needs no data. Scores are normalised per layer and ranked globally.
"""

import torch
from torch import nn

from ..errors import UserError
from ..layers.attention import AttentionBase, MultiHeadAttention
from ..layers.feedforward import FeedForward
from .targets import ALL_TARGETS, find_linears, projections_of

IMPORTANCE = ("taylor", "magnitude")


# -- unstructured -----------------------------------------------------------------------------

@torch.no_grad()
def prune_magnitude(model: nn.Module, sparsity: float, targets=ALL_TARGETS) -> dict:
    """Zero the `sparsity` fraction of smallest-|w| weights over all targeted projections
    (one global threshold). Returns {name: bool keep-mask} for `keep_pruned`."""
    if not 0 <= sparsity < 1:
        raise UserError(f"sparsity must be in [0, 1), got {sparsity}")
    linears = {name: linear for name, _, _, linear in find_linears(model, targets)}
    magnitudes = torch.cat([linear.weight.detach().abs().flatten() for linear in linears.values()])
    count = int(sparsity * magnitudes.numel())
    threshold = magnitudes.kthvalue(count).values if count else magnitudes.new_tensor(-1.0)
    masks = {}
    for name, linear in linears.items():
        masks[name] = linear.weight.abs() > threshold
        linear.weight.mul_(masks[name])
    return masks


def keep_pruned(model: nn.Module, masks: dict):
    """Zero the gradients of pruned weights so fine-tuning (with a fresh optimiser) keeps them 0."""
    return [model.get_submodule(name).weight.register_hook(lambda grad, mask=mask: grad * mask)
            for name, mask in masks.items()]


def sparsity_report(model: nn.Module, targets=ALL_TARGETS) -> dict:
    pruned = [linear.weight for *_, linear in find_linears(model, targets)]
    zeros_pruned = sum(int((w == 0).sum()) for w in pruned)
    total_pruned = sum(w.numel() for w in pruned)
    zeros_all = sum(int((p == 0).sum()) for p in model.parameters())
    total_all = sum(p.numel() for p in model.parameters())
    return {"targeted_weights": total_pruned, "targeted_zeros": zeros_pruned,
            "targeted_sparsity": zeros_pruned / max(total_pruned, 1),
            "model_parameters": total_all, "model_zeros": zeros_all, "model_sparsity": zeros_all / max(total_all, 1),
            "note": "weights are stored dense: zeros do not shrink the file or speed up dense kernels"}


# -- structured: slicing ----------------------------------------------------------------------

def _sliced(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new nn.Linear keeping rows (dim 0: outputs) or columns (dim 1: inputs) `index`."""
    weight = linear.weight.detach().index_select(dim, index)
    new = nn.Linear(weight.size(1), weight.size(0), bias=linear.bias is not None,
                    device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if linear.bias is not None:
            new.bias.copy_(linear.bias.detach().index_select(0, index) if dim == 0 else linear.bias.detach())
    return new


def prune_heads(attention: AttentionBase, keep):
    """Keep only the heads `keep` (indices), physically: the projections into heads (q, k, v and
    whatever else the layer declares) lose rows, the output projection loses columns, and the
    layer slices its own per-head state."""
    if not attention.prunable_heads:
        raise UserError(f"{type(attention).__name__} cannot lose single heads")
    if isinstance(attention, MultiHeadAttention) and attention.n_kv_head != attention.n_head:
        raise UserError("head pruning needs as many key/value heads as query heads (no grouped-query attention)")
    projections = projections_of(attention)
    if not all(type(p) is nn.Linear for p in projections.values()):
        raise UserError("prune heads before quantising or adding LoRA")
    keep = sorted(int(h) for h in keep)
    if not keep:
        raise UserError("every layer must keep at least one attention head")
    device = attention.out_proj.weight.device
    heads = torch.tensor(keep, device=device)
    rows = (heads[:, None] * attention.head_dim + torch.arange(attention.head_dim, device=device)).flatten()
    outputs = type(attention).projections["o"]
    for name, linear in projections.items():
        setattr(attention, name, _sliced(linear, rows, 1 if name in outputs else 0))
    attention.select_heads(heads)


def prune_neurons(ffn: FeedForward, keep):
    """Keep only the hidden units `keep`: up (and gate) lose rows, down loses columns."""
    if not all(type(p) is nn.Linear for p in (ffn.up, ffn.down, ffn.gate or ffn.up)):
        raise UserError("prune neurons before quantising or adding LoRA")
    index = torch.tensor(sorted(int(i) for i in keep), dtype=torch.long, device=ffn.up.weight.device)
    if not index.numel():
        raise UserError("every feed-forward layer must keep at least one neuron")
    ffn.up = _sliced(ffn.up, index, 0)
    if ffn.gate is not None:
        ffn.gate = _sliced(ffn.gate, index, 0)
    ffn.down = _sliced(ffn.down, index, 1)
    ffn.pruned = True


# -- structured: importance and selection -------------------------------------------------------

def _unit_scores(weight_like: dict, attention, ffn):
    """Per-head and per-neuron sums of a nonnegative tensor laid out like the weights."""
    h, d, outputs = attention.n_head, attention.head_dim, type(attention).projections["o"]
    heads = sum(weight_like[p].reshape(-1, h, d).sum(dim=(0, 2)) if name in outputs
                else weight_like[p].reshape(h, d, -1).sum(dim=(1, 2))
                for name, p in projections_of(attention).items())
    neurons = weight_like[ffn.up].sum(dim=1) + weight_like[ffn.down].sum(dim=0)
    if ffn.gate is not None:
        neurons = neurons + weight_like[ffn.gate].sum(dim=1)
    return heads, neurons


def _layers(model):
    """Pairs (attention, feed-forward) in order; cross-attention is left alone."""
    attentions = [m for n, m in model.named_modules() if isinstance(m, AttentionBase) and "cross" not in n]
    ffns = [m for m in model.modules() if isinstance(m, FeedForward)]
    if not attentions or len(attentions) != len(ffns):
        raise UserError(f"structured pruning needs a model built from blocks of attention + feed-forward, which the "
                        f"{model.config.family} family is not; prune by magnitude or quantise instead")
    return list(zip(attentions, ffns))


def importance_scores(model, method="magnitude", batches=None):
    """-> [(head scores (H,), neuron scores (F,)) per layer]."""
    if method not in IMPORTANCE:
        raise UserError(f"unknown importance {method!r}; choose one of {', '.join(IMPORTANCE)}")
    layers = _layers(model)
    linears = [p for attention, ffn in layers for layer in (attention, ffn) for p in projections_of(layer).values()]
    if method == "magnitude":
        totals = {p: p.weight.detach().abs() for p in linears}
    else:
        if batches is None:
            raise UserError("taylor importance needs a few batches of data (or use magnitude)")
        totals = {p: torch.zeros_like(p.weight) for p in linears}
        was_training = model.training
        model.eval()
        flags = {p: p.requires_grad for p in model.parameters()}
        for p in linears:
            p.weight.requires_grad_(True)
        count = 0
        for batch in batches:
            model.zero_grad(set_to_none=True)
            model(**batch).loss.backward()
            for p in linears:
                if p.weight.grad is not None:  # None: unused by this batch (Longformer's global rows, none global)
                    totals[p] += (p.weight.detach() * p.weight.grad).abs()
            count += 1
        model.zero_grad(set_to_none=True)
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(was_training)
        if not count:
            raise UserError("taylor importance got no batches")
    return [_unit_scores(totals, attention, ffn) for attention, ffn in layers]


def _select(scores: list, amount: float) -> list:
    """Globally rank per-layer-normalised scores; -> per layer, the indices to keep (>= 1)."""
    normalised = [s / s.sum().clamp(min=1e-12) for s in scores]
    flat = torch.cat([s.float() for s in normalised])
    remove = round(amount * flat.numel())
    order = flat.argsort()
    layer_of = torch.cat([torch.full((len(s),), i) for i, s in enumerate(normalised)])
    offsets = [0]
    for s in normalised:
        offsets.append(offsets[-1] + len(s))
    left = [len(s) for s in normalised]
    dropped = set()
    for index in order.tolist():
        if len(dropped) == remove:
            break
        layer = int(layer_of[index])
        if left[layer] > 1:
            dropped.add(index)
            left[layer] -= 1
    return [[i - offsets[layer] for i in range(offsets[layer], offsets[layer + 1]) if i not in dropped]
            for layer in range(len(normalised))]


def prune_structured(model, amount=0.4, heads=True, neurons=True, importance="magnitude", batches=None) -> dict:
    """Remove the `amount` fraction of the least important heads and/or FFN neurons (of those
    the model has now). Returns before/after counts."""
    if not 0 <= amount < 1:
        raise UserError(f"pruning amount must be in [0, 1), got {amount}")
    before = sum(p.numel() for p in model.parameters())
    layers = _layers(model)
    fixed = sorted({type(a).__name__ for a, _ in layers if not a.prunable_heads})
    if heads and fixed:
        raise UserError(f"structured head pruning does not apply to the {model.config.family} family (its "
                        f"{', '.join(fixed)} layers cannot lose single heads); prune feed-forward neurons only "
                        "(heads=False) or by magnitude")
    scores = importance_scores(model, importance, batches)
    report = {"heads_before": [a.n_head for a, _ in layers], "ffn_before": [f.up.out_features for _, f in layers]}
    if heads:
        for (attention, _), keep in zip(layers, _select([h for h, _ in scores], amount)):
            if len(keep) < attention.n_head:
                prune_heads(attention, keep)
    if neurons:
        for (_, ffn), keep in zip(layers, _select([n for _, n in scores], amount)):
            if len(keep) < ffn.up.out_features:
                prune_neurons(ffn, keep)
    after = sum(p.numel() for p in model.parameters())
    return {**report, "heads_after": [a.n_head for a, _ in layers], "ffn_after": [f.up.out_features for _, f in layers],
            "parameters_before": before, "parameters_after": after}


def iterative_prune(model, target=0.4, rounds=3, finetune=None, **prune_options) -> list:
    """Remove `target` of the units in `rounds` equal steps, calling `finetune(model)` after each."""
    reports = []
    for i in range(1, rounds + 1):
        left_before, left_after = 1 - target * (i - 1) / rounds, 1 - target * i / rounds
        reports.append(prune_structured(model, 1 - left_after / left_before, **prune_options))
        if finetune is not None:
            finetune(model)
    return reports
