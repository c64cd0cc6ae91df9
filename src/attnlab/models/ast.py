"""AST, the Audio Spectrogram Transformer (Gong et al. 2021): a DeiT-style encoder over overlapping
patches of a log-mel spectrogram.

    input_values (B, T, F)  T frames of F mel bins (processors/audio.py)
    patches   = Conv2d 16x16, stride (10 in frequency, 10 in time) over the (F, T) image
                -> (B, f * t, C), frequency-major as Hugging Face orders them
    tokens    = [CLS, DIST, patches] + learned positions (f * t + 2 rows)
    blocks    = pre-LN TransformerBlock x n_layer, then LayerNorm
    pooled    = (hidden[:, 0] + hidden[:, 1]) / 2           the two special tokens' mean
    head      = Linear(LayerNorm(pooled)) -> (B, n_labels)   (head="classification")
"""

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import TransformerBlock
from ..layers.patches import PatchEmbedding, grid_size
from ..processors.audio import AudioProcessor
from .base import CLASSIFIER, PRESETS, FamilySpec, Model, ModelOutput, classifier_batch, register
from .media_encoder import MediaEncoderConfig

HEADS = ("none", "classification")
N_SPECIAL = 2  # CLS and distillation tokens


@dataclasses.dataclass
class ASTConfig(MediaEncoderConfig):
    family = "ast"
    heads = HEADS
    num_mel_bins: int = 128
    max_length: int = 1024  # spectrogram frames the position table covers (10 ms each)
    patch_size: int = 16
    frequency_stride: int = 10
    time_stride: int = 10
    head: str = "classification"
    n_labels: int = 527  # AudioSet's classes

    def validate(self):
        super().validate()
        self.require_positive("num_mel_bins", "max_length", "patch_size", "frequency_stride", "time_stride")
        if min(self.num_mel_bins, self.max_length) < self.patch_size:
            raise self.invalid(f"num_mel_bins ({self.num_mel_bins}) and max_length ({self.max_length}) must be at "
                               f"least patch_size ({self.patch_size})")

    @property
    def grid(self) -> tuple:
        """(frequency, time) patches."""
        return (grid_size(self.num_mel_bins, self.patch_size, self.frequency_stride),
                grid_size(self.max_length, self.patch_size, self.time_stride))

    @property
    def max_seq_len(self) -> int:
        """Tokens the encoder sees: every patch and the two special tokens."""
        f, t = self.grid
        return f * t + N_SPECIAL


class AST(Model):
    def __init__(self, config: ASTConfig):
        super().__init__(config)
        c = config
        self.patches = PatchEmbedding(1, c.d_model, c.patch_size, (c.frequency_stride, c.time_stride))
        self.special = nn.Parameter(torch.zeros(1, N_SPECIAL, c.d_model))  # CLS, DIST
        self.positions = nn.Parameter(torch.zeros(1, c.max_seq_len, c.d_model))
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(c.d_model, c.n_head, c.ffn_size, ffn_kind=c.activation, norm="layernorm",
                             norm_eps=c.norm_eps, prenorm=True, dropout=c.dropout, attn_dropout=c.attn_dropout,
                             backend=c.attn_backend)
            for _ in range(c.n_layer))
        self.norm = nn.LayerNorm(c.d_model, eps=c.norm_eps)
        has_head = c.head == "classification"
        self.head_norm = nn.LayerNorm(c.d_model, eps=c.norm_eps) if has_head else None
        self.classifier = nn.Linear(c.d_model, c.n_labels) if has_head else None
        self.apply(self._init_weights)
        nn.init.trunc_normal_(self.special, std=0.02)
        nn.init.trunc_normal_(self.positions, std=0.02)

    @staticmethod
    def _init_weights(module, std=0.02):
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(module.weight, std=std)
            nn.init.zeros_(module.bias)

    def encode(self, input_values: torch.Tensor) -> torch.Tensor:
        """(B, T, F) spectrogram -> (B, f * t + 2, C) final hidden states (CLS and DIST first)."""
        c = self.config
        if tuple(input_values.shape[1:]) != (c.max_length, c.num_mel_bins):
            raise ValueError(f"input_values of shape {tuple(input_values.shape)}; this model reads "
                             f"(batch, {c.max_length} frames, {c.num_mel_bins} mel bins)")
        x = self.patches(input_values.transpose(1, 2).unsqueeze(1))  # (B, 1, F, T) -> (B, f * t, C)
        x = torch.cat([self.special.expand(x.size(0), -1, -1), x], dim=1) + self.positions
        x = self.drop(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    @staticmethod
    def pool(hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, C): the mean of the CLS and distillation tokens' states."""
        return hidden[:, :N_SPECIAL].mean(dim=1)

    def forward(self, input_values: torch.Tensor, labels: torch.Tensor | None = None) -> ModelOutput:
        """input_values (B, T, F); labels (B,) class ids -> ModelOutput(logits (B, n_labels), loss,
        hidden_states (B, f * t + 2, C)). head="none" returns the hidden states only."""
        hidden = self.encode(input_values)
        out = ModelOutput(hidden_states=hidden)
        if self.classifier is not None:
            out.logits = self.classifier(self.head_norm(self.pool(hidden)))
            if labels is not None:
                out.loss = F.cross_entropy(out.logits, labels)
        return out


def audio_batch(config: ASTConfig, generator: torch.Generator, batch: int = 2) -> dict:
    """Normalised-looking spectrograms (B, max_length, num_mel_bins) and class labels (B,)."""
    values = torch.randn(batch, config.max_length, config.num_mel_bins, generator=generator) * 0.5
    return classifier_batch({"input_values": values}, config.n_labels, generator)


def _ast(n_layer, n_head, d_model, **fields):
    return ASTConfig(n_layer=n_layer, n_head=n_head, d_model=d_model, **fields)


PRESETS.update({
    "ast-tiny": _ast(2, 2, 32, num_mel_bins=32, max_length=32, n_labels=3),
    "ast-small-speech": _ast(4, 4, 128, num_mel_bins=64, max_length=100, frequency_stride=12, time_stride=12,
                             n_labels=10, dropout=0.1),
    "ast-base": _ast(12, 12, 768),  # MIT/ast-finetuned-audioset-10-10-0.4593's shape
})

register(FamilySpec(ASTConfig, AST, kind=CLASSIFIER, modality="audio", block_class=TransformerBlock,
                    tiny_preset="ast-tiny", example_batch=audio_batch, processor=AudioProcessor))
