"""Optimiser groups and learning-rate schedules."""

import math

import torch
from torch import nn

SCHEDULES = ("cosine", "constant", "inverse_sqrt")


def param_groups(model: nn.Module, weight_decay: float):
    """Weight decay on matrices only: never on biases, norm weights or embeddings."""
    embedding_params = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if p.dim() < 2 or id(p) in embedding_params else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model, lr, weight_decay, betas, fused=False):
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=tuple(betas),
                             **({"fused": True} if fused else {}))


def lr_at(step: int, schedule: str, lr: float, min_lr: float, warmup: int, max_steps: int,
          done: float = 0.0) -> float:
    """Learning rate for `step` (0-based); `done` is the fraction of a time budget spent, so that a
    budgeted run's decay ends when its time does (whichever end comes first).

    cosine: linear warmup to lr, then cosine decay to min_lr at max_steps (or the budget's end).
    constant: linear warmup, then lr.
    inverse_sqrt: Vaswani et al. — lr * min((s+1)^-0.5, (s+1) * warmup^-1.5), normalised so the
    peak (at the end of warmup) equals lr.
    """
    if schedule == "inverse_sqrt":
        s = step + 1
        return lr * math.sqrt(max(warmup, 1)) * min(s ** -0.5, s * max(warmup, 1) ** -1.5)
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    progress = min(1.0, max((step - warmup) / max(1, max_steps - warmup), done))
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (lr - min_lr)
