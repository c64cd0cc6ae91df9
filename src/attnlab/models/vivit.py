"""ViViT: video classification over space-time tokens, with joint or divided space-time attention.

    frames (B, T, C, H, W) -> tubelets (t x h x w tokens) + learned positions, a CLS token in front
    blocks: pre-LN, one of
      attention="joint"    ViViT model 1, "spatio-temporal attention" (Arnab et al. 2021): every
                           token attends to every token of every frame; one position table over
                           the 1 + t*h*w tokens. Same numbers as Hugging Face VivitModel.
      attention="divided"  TimeSformer's "divided space-time attention" (Bertasius et al. 2021): in
                           each block, temporal attention across the t time steps at each patch
                           location (then a linear, TimeSformer's temporal_fc), spatial attention
                           within each time step over its h*w patches and the CLS token (the CLS
                           outputs of the t steps averaged), then the MLP; positions are a spatial
                           table (CLS + h*w) plus a temporal one (t). Same numbers as Hugging Face
                           TimesformerModel(attention_type="divided_space_time").
                           ViViT's paper has three factorisations; this is closest to its model 3
                           ("factorised self-attention", temporal and spatial attention in every
                           block), not model 2 ("factorised encoder": a spatial encoder per frame,
                           then a temporal encoder over frame summaries) nor model 4 ("factorised
                           dot-product": heads split between spatial and temporal attention). It
                           differs from model 3 in the order (time first), the temporal_fc and in
                           letting the CLS token take part in spatial attention only.
    final LayerNorm -> Linear on the CLS state -> logits (B, n_labels)

Tokens are kept time-major (time step, then rows, then columns) in both variants; hidden_states
(B, 1 + t*h*w, C) come out in that order (Hugging Face TimeSformer orders its tokens patch-major).
"""

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import MultiHeadAttention, TransformerBlock
from ..layers.patches import TubeletEmbedding
from ..processors.video import VideoProcessor
from .base import CLASSIFIER, PRESETS, FamilySpec, Model, ModelOutput, classifier_batch, register
from .media_encoder import MediaEncoderConfig

ATTENTIONS = ("joint", "divided")
HEADS = ("classifier", "none")  # none: the bare encoder (Hugging Face VivitModel / TimesformerModel)


@dataclasses.dataclass
class VivitConfig(MediaEncoderConfig):
    family = "vivit"
    heads = HEADS
    image_size: int = 224  # frames are square, image_size x image_size pixels
    n_frames: int = 32
    n_channels: int = 3
    patch_size: int = 16  # a tubelet is tubelet_frames x patch_size x patch_size pixels
    tubelet_frames: int = 2
    activation: str = "gelu_tanh"
    norm_eps: float = 1e-6
    attention: str = "joint"  # "joint" (ViViT model 1) or "divided" (TimeSformer divided space-time)
    n_labels: int = 400

    def validate(self):
        super().validate()
        self.require_positive("image_size", "n_frames", "n_channels", "patch_size", "tubelet_frames")
        self.require_divisible("image_size", "patch_size")
        self.require_divisible("n_frames", "tubelet_frames")
        self.require_choice("attention", ATTENTIONS)

    @property
    def grid(self) -> tuple:
        """(time steps, patches per time step) of the token grid."""
        side = self.image_size // self.patch_size
        return self.n_frames // self.tubelet_frames, side * side

    @property
    def max_seq_len(self) -> int:
        """Tokens the blocks see: the CLS token and every tubelet."""
        steps, patches = self.grid
        return 1 + steps * patches


class VideoEmbedding(nn.Module):
    """(B, T, C, H, W) -> (B, 1 + t*s, d) tokens: CLS, then tubelets time-major, with positions from
    one table over all tokens (joint) or a spatial table plus a temporal one (divided)."""

    def __init__(self, c: VivitConfig):
        super().__init__()
        self.c = c
        steps, patches = c.grid
        self.tubelets = TubeletEmbedding(c.n_channels, c.d_model, c.tubelet_frames, c.patch_size)
        self.cls_token = _learned(c.d_model)
        if c.attention == "joint":
            self.positions = _learned(1 + steps * patches, c.d_model)
        else:
            self.space_positions = _learned(1 + patches, c.d_model)
            self.time_positions = nn.Parameter(torch.zeros(steps, c.d_model))  # TimeSformer starts them at zero
        self.drop = nn.Dropout(c.dropout)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        b, frames, channels, height, width = pixel_values.shape
        want = (self.c.n_frames, self.c.n_channels, self.c.image_size, self.c.image_size)
        if (frames, channels, height, width) != want:
            raise ValueError(f"pixel_values of {(frames, channels, height, width)} (T, C, H, W); this model "
                             f"takes {want}")
        tokens = self.tubelets(pixel_values)  # (B, t*s, d)
        cls = self.cls_token.expand(b, 1, -1)  # (B, 1, d)
        if self.c.attention == "joint":
            x = torch.cat([cls, tokens], dim=1) + self.positions
        else:
            steps, patches = self.c.grid
            tokens = tokens.view(b, steps, patches, -1) + self.space_positions[1:] + self.time_positions[:, None]
            x = torch.cat([cls + self.space_positions[0], tokens.flatten(1, 2)], dim=1)
        return self.drop(x)  # (B, 1 + t*s, d)


def _learned(*shape: int) -> nn.Parameter:
    """A learned table (CLS token, positions), truncated Normal(0, 0.02) at the start."""
    return nn.Parameter(nn.init.trunc_normal_(torch.empty(shape), std=0.02))


class DividedSpaceTimeBlock(TransformerBlock):
    """TimeSformer's divided space-time block over x (B, 1 + t*s, d), CLS first, tokens time-major:

        tokens += temporal_fc(TemporalAttention(norm_temporal(tokens)))   over t, at each of s places
        [cls; tokens] += SpatialAttention(norm_self([cls; tokens]))         over s + 1, per time step;
                                                                           the CLS update is the mean
                                                                           of its t updates
        x += FFN(norm_ffn(x))

    The spatial attention and the FFN are TransformerBlock's own (self_attn, ffn)."""

    def __init__(self, d_model: int, n_head: int, ffn_hidden: int, steps: int, **block):
        super().__init__(d_model, n_head, ffn_hidden, prenorm=True, **block)
        self.steps = steps
        self.temporal_attn = MultiHeadAttention(d_model, n_head, dropout=self.self_attn.dropout,
                                                backend=self.self_attn.backend)
        self.norm_temporal = nn.LayerNorm(d_model, eps=self.norm_self.eps)
        self.temporal_fc = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        t, s = self.steps, (n - 1) // self.steps
        cls, tokens = x[:, :1], x[:, 1:]
        along_time = tokens.view(b, t, s, d).transpose(1, 2).reshape(b * s, t, d)
        update = self.temporal_fc(self.temporal_attn(self.norm_temporal(along_time)))  # (B*s, t, d)
        tokens = tokens + self.dropout(update.view(b, s, t, d).transpose(1, 2).reshape(b, t * s, d))
        per_step = torch.cat([cls.expand(b, t, d).reshape(b * t, 1, d), tokens.reshape(b * t, s, d)], dim=1)
        update = self.dropout(self.self_attn(self.norm_self(per_step)))  # (B*t, 1 + s, d)
        cls = cls + update[:, 0].view(b, t, d).mean(1, keepdim=True)
        x = torch.cat([cls, tokens + update[:, 1:].reshape(b, t * s, d)], dim=1)
        return x + self.dropout(self.ffn(self.norm_ffn(x)))


class Vivit(Model):
    def __init__(self, config: VivitConfig):
        super().__init__(config)
        c = config
        self.embedding = VideoEmbedding(c)
        self.blocks = nn.ModuleList(_block(c) for _ in range(c.n_layer))
        self.norm = nn.LayerNorm(c.d_model, eps=c.norm_eps)
        self.classifier = nn.Linear(c.d_model, c.n_labels) if c.head == "classifier" else None
        self.apply(_init_weights)

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) frames -> final hidden states (B, 1 + t*h*w, d), CLS first."""
        x = self.embedding(pixel_values)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> ModelOutput:
        """pixel_values (B, T, C, H, W), labels (B,) -> ModelOutput(logits (B, n_labels) from the CLS
        state (none for head="none"), cross-entropy loss when labels are given, hidden_states
        (B, 1 + t*h*w, d))."""
        hidden = self.encode(pixel_values)
        if self.classifier is None:
            return ModelOutput(hidden_states=hidden)
        logits = self.classifier(hidden[:, 0])
        loss = None if labels is None else F.cross_entropy(logits.float(), labels)
        return ModelOutput(logits=logits, loss=loss, hidden_states=hidden)


def _block(c: VivitConfig) -> TransformerBlock:
    shared = {"ffn_kind": c.activation, "norm": "layernorm", "norm_eps": c.norm_eps, "dropout": c.dropout,
              "attn_dropout": c.attn_dropout, "backend": c.attn_backend}
    if c.attention == "joint":
        return TransformerBlock(c.d_model, c.n_head, c.ffn_size, prenorm=True, **shared)
    return DividedSpaceTimeBlock(c.d_model, c.n_head, c.ffn_size, steps=c.grid[0], **shared)


def _init_weights(module: nn.Module, std: float = 0.02):
    """ViT's initialisation: truncated Normal(0, 0.02) weights and zero biases for linears and the
    tubelet projection."""
    if isinstance(module, (nn.Linear, nn.Conv3d)):
        nn.init.trunc_normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def video_batch(config: VivitConfig, generator: torch.Generator, batch: int = 2) -> dict:
    """Random pixel_values (B, T, C, S, S) as the video processor makes them, and labels (B,)."""
    shape = (batch, config.n_frames, config.n_channels, config.image_size, config.image_size)
    return classifier_batch({"pixel_values": torch.randn(shape, generator=generator)}, config.n_labels, generator)


_TINY = {"image_size": 16, "n_frames": 4, "patch_size": 4, "n_layer": 2, "n_head": 2, "d_model": 32, "ffn_hidden": 64,
         "n_labels": 3}

PRESETS.update({
    "vivit-tiny": VivitConfig(tubelet_frames=2, **_TINY),
    "vivit-divided-tiny": VivitConfig(tubelet_frames=1, attention="divided", **_TINY),
    # moving digits (data/moving_digits.py): 8 grey 32 x 32 frames, tubelets of 2 x 8 x 8, 8 directions
    "vivit-moving-digits": VivitConfig(image_size=32, n_frames=8, n_channels=1, patch_size=8, n_layer=4, n_head=4,
                                       d_model=64, ffn_hidden=128, n_labels=8),
    "vivit-b-16x2": VivitConfig(),  # google/vivit-b-16x2-kinetics400's shape
    "timesformer-base": VivitConfig(n_frames=8, tubelet_frames=1, attention="divided", activation="gelu"),
})

register(FamilySpec(VivitConfig, Vivit, kind=CLASSIFIER, modality="video", block_class=TransformerBlock,
                    tiny_preset="vivit-tiny", example_batch=video_batch, processor=VideoProcessor))
