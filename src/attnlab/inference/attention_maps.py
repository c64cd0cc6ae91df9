"""Where a ViT looks: attention rollout (Abnar & Zuidema 2020) from the [CLS] token to the patches,
drawn over the image as a PNG.

Each block's attention weights (B, H, T, T), averaged over heads, with the residual path added as
half an identity and rows renormalised, are multiplied from the first block to the last; the [CLS]
row of the product, over the patch tokens, is how much each patch fed the [CLS] state. The weights
come from the math path (softmax(q k^T / sqrt(d))) on the same inputs the blocks' attention read.
"""

from pathlib import Path

import numpy as np
import torch


@torch.no_grad()
def attention_rollout(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, h, w): the rollout's [CLS] row over the patch grid, summing to 1 per image."""
    weights = []

    def record(attention, args, kwargs):
        x = args[0]  # (B, T, C): the normed states the attention reads
        q = attention._heads(attention.q_proj(x), attention.n_head)  # (B, H, T, D)
        k = attention._heads(attention.k_proj(x), attention.n_head)
        scale = attention.scale or attention.head_dim ** -0.5
        weights.append(((q @ k.transpose(-2, -1)) * scale).softmax(-1))  # (B, H, T, T)

    hooks = [block.self_attn.register_forward_pre_hook(record, with_kwargs=True) for block in model.blocks]
    try:
        model.eval()(pixel_values)
    finally:
        for hook in hooks:
            hook.remove()
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
