"""Attention weights out of any model with softmax attention, and two ways of drawing them.

`attention_maps` runs a model once and records every attention layer's (B, H, Tq, Tk) weights,
asking each module for them through the attention contract's `return_weights` (which always takes
the math path, softmax(q k^T / sqrt(d) + bias) with the mask applied); a family whose attention
never forms the full matrix says so in its registry entry and is refused in one line.

Attention rollout (Abnar & Zuidema 2020) shows where a ViT looks, from the [CLS] token to the
patches, drawn over the image as a PNG: each block's weights, averaged over heads, with the residual
path added as half an identity and rows renormalised, are multiplied from the first block to the
last; the [CLS] row of the product, over the patch tokens, is how much each patch fed the [CLS] state.
"""

import dataclasses
import threading
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..layers.attention import AttentionBase
from ..models.base import CAUSAL_LM, DUAL_ENCODER, family_spec

STACKS = ("encoder", "decoder", "cross")  # encoder self-attention, decoder self-attention, cross-attention


@dataclasses.dataclass
class AttentionMap:
    stack: str  # one of STACKS
    layer: int  # counted within its stack, from 0
    weights: torch.Tensor  # (B, H, Tq, Tk): each row sums to 1 over the keys it may see, 0 on masked keys


def refuse_without_weights(model_or_config):
    """One line when the family of a model (or config) has no attention weights to show."""
    spec = family_spec(model_or_config)
    if spec.no_attention_weights:
        raise UserError(f"{spec.name} models have no attention weights to show: {spec.no_attention_weights}")


@torch.no_grad()
def attention_maps(model, batch: dict) -> list:
    """Run `model(**batch)` in eval mode (a dual encoder: the tower the batch is for) -> [AttentionMap]
    in the order the layers ran: encoder self-attention, decoder self-attention (a causal LM's layers are
    decoder layers) and cross-attention. Only this thread's calls are recorded: a server may run the same
    model on another thread meanwhile."""
    refuse_without_weights(model)
    kind = family_spec(model).kind
    decoder_only = kind == CAUSAL_LM
    run = model.encode if kind == DUAL_ENCODER else (lambda inputs: model(**inputs))
    maps, counts = [], dict.fromkeys(STACKS, 0)
    ours = threading.get_ident()

    def ask(module, args, kwargs):
        if threading.get_ident() == ours:
            return args, {**kwargs, "return_weights": True}

    def record(name, module, args, kwargs, output):
        if threading.get_ident() != ours:
            return None
        stack = ("cross" if kwargs.get("kv_input") is not None
                 else "decoder" if decoder_only or name.startswith("decoder") else "encoder")
        maps.append(AttentionMap(stack, counts[stack], output[1].float()))
        counts[stack] += 1
        return output[0]

    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, AttentionBase):
            hooks.append(module.register_forward_pre_hook(ask, with_kwargs=True))
            hooks.append(module.register_forward_hook(lambda *a, name=name: record(name, *a), with_kwargs=True))
    was_training = model.training
    try:
        model.eval()
        run(batch)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return maps


@torch.no_grad()
def attention_rollout(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, h, w): the rollout's [CLS] row over the patch grid, summing to 1 per image."""
    weights = [m.weights for m in attention_maps(model, {"pixel_values": pixel_values})]
    rollout = None
    for layer in weights:
        mixed = 0.5 * layer.mean(1) + 0.5 * torch.eye(layer.size(-1))  # (B, T, T)
        mixed = mixed / mixed.sum(-1, keepdim=True)
        rollout = mixed if rollout is None else mixed @ rollout
    cls = rollout[:, 0, 1:]  # (B, h * w)
    grid = model.patches.grid(*pixel_values.shape[-2:])
    return (cls / cls.sum(-1, keepdim=True)).reshape(-1, *grid)


def save_overlay(image: np.ndarray, heat: torch.Tensor, path, title: str = ""):
    """The image (H, W[, C], as read) with the (h, w) map stretched over it, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = image.astype(np.float32) / (255.0 if image.dtype.kind in "ui" else 1.0)
    shown = shown[..., :3] if shown.ndim == 3 else shown
    height, width = shown.shape[:2]
    fig, ax = plt.subplots(figsize=(3.2, 3.4))
    ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None)
    ax.imshow(heat.numpy(), cmap="jet", alpha=0.45, extent=(-0.5, width - 0.5, height - 0.5, -0.5),
              interpolation="bilinear")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(Path(path), dpi=100)
    plt.close(fig)
