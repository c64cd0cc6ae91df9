"""ViT (Dosovitskiy et al. 2021): an image as a sequence of patches, classified from a [CLS] token.

    tokens  = [CLS] + PatchEmbedding(pixels)            (B, 1 + h * w, C), h = w = image_size / patch_size
    x       = tokens + learned positions                one row per grid cell, plus the [CLS] row
    x       = LayerNorm(x)                              optional (pre_norm: CLIP's vision tower)
    blocks  = pre-LN TransformerBlock x n_layer         bidirectional, no padding
    hidden  = LayerNorm(x)
    pooled  = tanh(Linear(hidden[:, 0]))                optional (Hugging Face ViTModel's pooler)
    logits  = Linear(hidden[:, 0])                      head="classifier" (ViTForImageClassification)

An image of another size than the config's is run with the position table bicubically resampled
to its patch grid (as Hugging Face's interpolate_pos_encoding=True). The numbers are exact, but a
model loses accuracy at a size it never saw until it is fine-tuned at that size.
"""

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import TransformerBlock
from ..layers.patches import PatchEmbedding, resample_grid_positions
from ..processors.image import ImageProcessor
from .base import CLASSIFIER, PRESETS, FamilySpec, Model, ModelOutput, classifier_batch, register
from .media_encoder import MediaEncoderConfig

HEADS = ("classifier", "none")  # none: the bare encoder (hidden states and, with pooler, the pooled vector)


@dataclasses.dataclass
class ViTConfig(MediaEncoderConfig):
    family = "vit"
    heads = HEADS
    image_size: int = 224  # square images of image_size pixels
    patch_size: int = 16
    n_channels: int = 3
    pooler: bool = False  # Hugging Face ViTModel's tanh pooler over the [CLS] state
    pre_norm: bool = False  # a LayerNorm over the embedded tokens before the blocks (CLIP's pre_layrnorm)
    patch_bias: bool = True  # the patch projection's bias (CLIP's has none)

    def validate(self):
        super().validate()
        self.require_positive("image_size", "patch_size", "n_channels")
        self.require_divisible("image_size", "patch_size")

    @property
    def max_seq_len(self) -> int:
        """The tokens of an image of the config's size: [CLS] and one per patch (the position table's rows)."""
        return 1 + self.grid[0] * self.grid[1]

    @property
    def grid(self) -> tuple:
        """The (rows, columns) of patches of an image of the config's size."""
        side = self.image_size // self.patch_size
        return side, side


class ViT(Model):
    def __init__(self, config: ViTConfig):
        super().__init__(config)
        c = config
        self.patches = PatchEmbedding(c.n_channels, c.d_model, c.patch_size, bias=c.patch_bias)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.d_model))
        self.positions = nn.Parameter(torch.zeros(1, c.max_seq_len, c.d_model))  # [CLS] row first
        self.drop = nn.Dropout(c.dropout)
        self.pre_norm = nn.LayerNorm(c.d_model, eps=c.norm_eps) if c.pre_norm else None
        self.blocks = nn.ModuleList(
            TransformerBlock(c.d_model, c.n_head, c.ffn_size, ffn_kind=c.activation, norm_eps=c.norm_eps,
                             prenorm=True, dropout=c.dropout, attn_dropout=c.attn_dropout, backend=c.attn_backend)
            for _ in range(c.n_layer))
        self.norm = nn.LayerNorm(c.d_model, eps=c.norm_eps)
        self.pooler = nn.Linear(c.d_model, c.d_model) if c.pooler else None
        self.classifier = nn.Linear(c.d_model, c.n_labels) if c.head == "classifier" else None
        self._init_weights()

    def _init_weights(self, std: float = 0.02):
        """Truncated normal(0, 0.02) for the patch projection, linears, [CLS] and positions; zero biases."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.cls_token, std=std)
        nn.init.trunc_normal_(self.positions, std=std)

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 1 + h * w, C): [CLS] and patches with their positions, the table
        resampled when the image's patch grid is not the config's."""
        x = self.patches(pixel_values)  # (B, h * w, C)
        grid = self.patches.grid(*pixel_values.shape[-2:])
        patch_positions = resample_grid_positions(self.positions[0, 1:], self.config.grid, grid)  # (h * w, C)
        cls = (self.cls_token + self.positions[:, :1]).expand(x.size(0), -1, -1)  # (B, 1, C)
        return self.drop(torch.cat([cls, x + patch_positions], dim=1))

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> final hidden states (B, 1 + h * w, C), layer-normed."""
        x = self.embed(pixel_values)
        if self.pre_norm is not None:
            x = self.pre_norm(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, C): the pooler over the [CLS] state, or the [CLS] state itself."""
        cls = hidden[:, 0]
        return torch.tanh(self.pooler(cls)) if self.pooler is not None else cls

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> ModelOutput:
        """pixel_values (B, C, H, W), labels (B,) -> logits (B, n_labels) from the [CLS] state (none
        for head="none"), cross-entropy loss when labels are given, hidden states (B, T, C)."""
        hidden = self.encode(pixel_values)
        if self.classifier is None:
            return ModelOutput(hidden_states=hidden)
        logits = self.classifier(hidden[:, 0])  # (B, n_labels)
        loss = None if labels is None else F.cross_entropy(logits.float(), labels)
        return ModelOutput(logits=logits, loss=loss, hidden_states=hidden)


def vit_batch(config: ViTConfig, generator: torch.Generator, batch: int = 2) -> dict:
    """Random pixel_values (B, C, S, S) as the image processor makes them, and labels (B,)."""
    pixels = torch.randn(batch, config.n_channels, config.image_size, config.image_size, generator=generator)
    return classifier_batch({"pixel_values": pixels}, config.n_labels, generator)


PRESETS.update({
    "vit-tiny": ViTConfig(image_size=16, patch_size=4, n_layer=2, n_head=2, d_model=32, ffn_hidden=64, n_labels=3),
    "vit-base-patch16-224": ViTConfig(),
    # MNIST-sized digits (28 x 28, one channel): 4 x 4 patches of 7 x 7 pixels, 4 blocks of width 96
    "vit-mnist": ViTConfig(image_size=28, patch_size=7, n_channels=1, n_layer=4, n_head=4, d_model=96,
                           ffn_hidden=192, n_labels=10),
    # scikit-learn's 8 x 8 digits: 4 x 4 patches of 2 x 2 pixels
    "vit-digits": ViTConfig(image_size=8, patch_size=2, n_channels=1, n_layer=4, n_head=4, d_model=64,
                            ffn_hidden=128, n_labels=10),
})

register(FamilySpec(ViTConfig, ViT, kind=CLASSIFIER, modality="image", block_class=TransformerBlock,
                    tiny_preset="vit-tiny", example_batch=vit_batch, processor=ImageProcessor))
