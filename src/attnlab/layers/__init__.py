"""Shared building blocks. Layers know nothing of models."""

from .attention import AttentionBase, MultiHeadAttention, scaled_dot_product_attention
from .blocks import TransformerBlock
from .feedforward import FFN_KINDS, ChunkedFeedForward, FeedForward, activation_of
from .decode_state import DecodeState, HiddenMemory, KVCache, RecomputeState, StaticKVCache
from .lsh_attention import LocalSelfAttention, LSHSelfAttention, lsh_attention
from .masks import causal_mask, combine_masks, mean_pool, padding_mask, positions_from_mask, to_additive
from .norms import NORMS, RMSNorm, make_norm
from .output import VocabProjection
from .positions import (AxialPositions, LearnedPositions, RelativePositionBias, RotaryEmbedding, SinusoidalPositions,
                        relative_position_bucket, sinusoidal_table)
from .reversible import ReversibleBlock, ReversibleSequence

__all__ = [
    "AttentionBase", "AxialPositions", "ChunkedFeedForward", "DecodeState", "FFN_KINDS", "FeedForward", "HiddenMemory",
    "KVCache", "LSHSelfAttention", "LearnedPositions", "LocalSelfAttention", "MultiHeadAttention", "NORMS", "RMSNorm",
    "RecomputeState", "RelativePositionBias", "ReversibleBlock", "ReversibleSequence", "RotaryEmbedding",
    "SinusoidalPositions", "StaticKVCache", "TransformerBlock", "VocabProjection", "activation_of", "causal_mask", "combine_masks",
    "lsh_attention", "make_norm", "mean_pool", "padding_mask", "positions_from_mask", "relative_position_bucket",
    "scaled_dot_product_attention", "sinusoidal_table", "to_additive",
]
