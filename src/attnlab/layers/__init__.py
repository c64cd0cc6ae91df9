"""Shared building blocks. Layers know nothing of models."""

from .attention import MultiHeadAttention, scaled_dot_product_attention
from .blocks import TransformerBlock
from .feedforward import FFN_KINDS, FeedForward
from .kv_cache import KVCache
from .masks import causal_mask, combine_masks, padding_mask, to_additive
from .norms import NORMS, RMSNorm, make_norm
from .positions import (LearnedPositions, RelativePositionBias, RotaryEmbedding, SinusoidalPositions,
                        relative_position_bucket, sinusoidal_table)

__all__ = [
    "FFN_KINDS", "FeedForward", "KVCache", "LearnedPositions", "MultiHeadAttention", "NORMS", "RMSNorm",
    "RelativePositionBias", "RotaryEmbedding", "SinusoidalPositions", "TransformerBlock", "causal_mask",
    "combine_masks", "make_norm", "padding_mask", "relative_position_bucket", "scaled_dot_product_attention",
    "sinusoidal_table", "to_additive",
]
