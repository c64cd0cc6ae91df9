"""Reformer (Kitaev et al. 2020): LSH (and chunked local) attention in reversible residual
layers with chunked feed-forward, as a causal LM (or a bidirectional encoder, causal=False).

Each layer is a reversible block on two streams that both start as the embeddings:
    y1 = x1 + Attention(LayerNorm(x2)),  y2 = x2 + FeedForward(LayerNorm(y1))
and the output is LayerNorm([y1; y2]) of width 2 * d_model. Positions are axial (the
reference's default) or learned, added to the embeddings, or rotary: one RotaryEmbedding shared
by every attention layer turns queries and keys (no Hugging Face counterpart, so no export).
"""

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..layers import (FFN_KINDS, AxialPositions, ChunkedFeedForward, FeedForward, LearnedPositions, LocalSelfAttention,
                      LSHSelfAttention, RecomputeState, ReversibleBlock, ReversibleSequence, RotaryEmbedding)
from ..processors import TextProcessor
from .base import CAUSAL_LM, PRESETS, FamilySpec, Model, ModelOutput, causal_lm_batch, init_gpt_style, register

ATTENTION_KINDS = ("lsh", "local")
POSITIONS = ("axial", "learned", "rotary")  # rotary: in the attention, not added to the input


@dataclasses.dataclass
class ReformerConfig(ModelConfig):
    family = "reformer"
    aliases = {"block_size": "max_seq_len"}
    vocab_size: int = 256
    max_seq_len: int = 1024  # longest sequence (max position)
    n_layer: int = 4
    attn_layers: list = None  # "lsh" or "local" per layer; None: all "lsh"
    n_head: int = 4
    head_dim: int = None  # None: d_model / n_head
    d_model: int = 128
    ffn_hidden: int = None  # None: 4 * d_model
    activation: str = "relu"
    causal: bool = True
    chunk_length: int = 64  # LSH chunk
    chunks_before: int = 1
    chunks_after: int = 0
    n_buckets: int = 32  # per hashing round; 1 or even
    n_hashes: int = 2
    hash_seed: int = None  # fixed random rotations (reproducible hashing); None: fresh each call
    local_chunk_length: int = 64
    local_chunks_before: int = 1
    local_chunks_after: int = 0
    position: str = "axial"
    rope_base: float = 10000.0
    axial_shape: list = (32, 32)  # rows * cols >= max_seq_len
    axial_dims: list = (64, 64)  # sums to d_model
    ffn_chunk_size: int = 0  # positions per feed-forward chunk; 0: all at once
    dropout: float = 0.0
    attn_dropout: float = 0.0
    norm_eps: float = 1e-12
    reversible: bool = True  # False: plain residual backprop (more memory, same numbers)
    pad_id: int = 0  # fills inputs up to a whole number of chunks

    def validate(self):
        self.require_positive("vocab_size", "max_seq_len", "n_layer", "n_head", "d_model", "chunk_length",
                              "n_buckets", "n_hashes", "local_chunk_length")
        if self.head_dim is not None:
            self.require_positive("head_dim")
        elif self.d_model % self.n_head:
            raise self.invalid(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head}), or set head_dim")
        if self.ffn_hidden is not None:
            self.require_positive("ffn_hidden")
        if self.n_buckets != 1 and self.n_buckets % 2:
            raise self.invalid(f"n_buckets must be 1 or even, got {self.n_buckets}")
        if self.attn_layers is not None:
            self.attn_layers = list(self.attn_layers)
            if len(self.attn_layers) != self.n_layer or any(k not in ATTENTION_KINDS for k in self.attn_layers):
                raise self.invalid(f"attn_layers must list {self.n_layer} entries (n_layer), each one of "
                                   f"{', '.join(ATTENTION_KINDS)}; got {self.attn_layers!r}")
        for name in ("chunks_before", "chunks_after", "local_chunks_before", "local_chunks_after", "ffn_chunk_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise self.invalid(f"{name} must be a non-negative integer, got {getattr(self, name)!r}")
        if self.max_seq_len % self.chunk_multiple:
            raise self.invalid(f"max_seq_len ({self.max_seq_len}) must be a multiple of the chunk lengths' least "
                               f"common multiple ({self.chunk_multiple}): inputs are padded up to whole chunks")
        self.require_choice("activation", tuple(k for k, (_, gated) in FFN_KINDS.items() if not gated))
        self.require_choice("position", POSITIONS)
        self.require_fraction("dropout", "attn_dropout")
        if self.position == "rotary" and self.attention_head_size % 2:
            raise self.invalid(f"rotary positions need an even head size, got {self.attention_head_size}")
        if self.position == "axial":
            self.axial_shape, self.axial_dims = list(self.axial_shape), list(self.axial_dims)
            if len(self.axial_shape) != 2 or len(self.axial_dims) != 2:
                raise self.invalid("axial_shape and axial_dims need two entries each (rows, cols)")
            if math.prod(self.axial_shape) < self.max_seq_len:
                raise self.invalid(f"axial_shape {self.axial_shape} covers {math.prod(self.axial_shape)} positions, "
                                   f"fewer than max_seq_len {self.max_seq_len}")
            if sum(self.axial_dims) != self.d_model:
                raise self.invalid(f"axial_dims {self.axial_dims} must sum to d_model {self.d_model}")

    def with_depth(self, kept: list):
        """Fewer layers, each keeping its attention kind."""
        attn_layers = None if self.attn_layers is None else [self.attn_layers[i] for i in kept]
        return self.replace(n_layer=len(kept), attn_layers=attn_layers)

    @property
    def attention_head_size(self) -> int:
        return self.head_dim or self.d_model // self.n_head

    @property
    def layer_kinds(self) -> list:
        return self.attn_layers or ["lsh"] * self.n_layer

    @property
    def chunk_lengths(self) -> list:
        """The chunk lengths of the attention kinds in use."""
        kinds = set(self.layer_kinds)
        return [length for kind, length in (("lsh", self.chunk_length), ("local", self.local_chunk_length))
                if kind in kinds]

    @property
    def chunk_multiple(self) -> int:
        """Sequences longer than the shortest chunk are padded to a multiple of this."""
        return math.lcm(*self.chunk_lengths)

    @property
    def min_chunk(self) -> int:
        return min(self.chunk_lengths)


class AttentionSublayer(nn.Module):
    """f of the reversible block: LayerNorm -> attention -> dropout."""

    def __init__(self, norm, attention, dropout):
        super().__init__()
        self.norm, self.attn, self.dropout = norm, attention, nn.Dropout(dropout)

    def forward(self, x, attention_mask=None, position_ids=None):
        """attention_mask (B, T): the model's 1 = real token, 0 = padding, as a key mask for the attention."""
        key_mask = None if attention_mask is None else attention_mask.bool()
        return self.dropout(self.attn(self.norm(x), key_mask=key_mask, position_ids=position_ids))


class Reformer(Model):
    def __init__(self, config: ReformerConfig):
        super().__init__(config)
        c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.pos_emb = self.rotary = None  # absolute positions added to the input, or rotary ones in attention
        if c.position == "axial":
            self.pos_emb = AxialPositions(c.axial_shape, c.axial_dims)
        elif c.position == "learned":
            self.pos_emb = LearnedPositions(c.max_seq_len, c.d_model)
        else:
            self.rotary = RotaryEmbedding(c.attention_head_size, c.max_seq_len, c.rope_base)
        self.drop = nn.Dropout(c.dropout)
        self.layers = ReversibleSequence([self._block(kind) for kind in c.layer_kinds], reversible=c.reversible)
        self.norm_f = nn.LayerNorm(2 * c.d_model, eps=c.norm_eps)
        self.lm_head = nn.Linear(2 * c.d_model, c.vocab_size)
        init_gpt_style(self, c.n_layer)

    def _block(self, kind):
        c = self.config
        if kind == "lsh":
            attention = LSHSelfAttention(c.d_model, c.n_head, c.head_dim, c.n_buckets, c.n_hashes, c.chunk_length,
                                         c.chunks_before, c.chunks_after, c.causal, c.hash_seed, c.attn_dropout,
                                         self.rotary)
        else:
            attention = LocalSelfAttention(c.d_model, c.n_head, c.head_dim, c.local_chunk_length, c.local_chunks_before,
                                           c.local_chunks_after, c.causal, c.attn_dropout, self.rotary)
        ffn = FeedForward(c.d_model, c.ffn_hidden or 4 * c.d_model, c.activation, dropout=c.dropout)
        return ReversibleBlock(
            AttentionSublayer(nn.LayerNorm(c.d_model, eps=c.norm_eps), attention, c.dropout),
            ChunkedFeedForward(nn.LayerNorm(c.d_model, eps=c.norm_eps), ffn, c.ffn_chunk_size, c.dropout))

    @property
    def generates(self) -> bool:
        """A bidirectional Reformer (causal=False) sees later tokens and cannot predict the next one."""
        return self.config.causal

    def init_state(self, batch: int, capacity: int) -> RecomputeState:
        """No cache (LSH buckets change as tokens arrive): each step re-reads the window."""
        return RecomputeState(batch, self.tok_emb.weight.device)

    def forward(self, input_ids, targets=None, attention_mask=None, position_ids=None, state=None, only_last=False):
        """input_ids (B, T) -> ModelOutput(logits (B, T, V), loss, hidden_states (B, T, 2C)).

        attention_mask (B, T): 1 for real tokens, 0 for padding. Inputs longer than one chunk
        are padded at the end to a whole number of chunks (padding is masked out).
        state: a RecomputeState from `init_state` holding the earlier tokens (attention_mask
        then covers the new tokens only).
        """
        if state is not None:
            return state.rerun(self, input_ids, attention_mask, only_last)
        b, t = input_ids.shape
        if t > self.config.max_seq_len:
            raise ValueError(f"sequence of {t} tokens exceeds max_seq_len {self.config.max_seq_len}")
        input_ids, attention_mask = self._pad_to_chunks(input_ids, attention_mask)
        if position_ids is None:
            position_ids = torch.arange(input_ids.size(1), device=input_ids.device).expand(b, -1)
        elif position_ids.size(1) < input_ids.size(1):
            position_ids = F.pad(position_ids, (0, input_ids.size(1) - position_ids.size(1)), value=0)
        x = self.tok_emb(input_ids)  # (B, T, C)
        if self.pos_emb is not None:
            x = x + self.pos_emb(position_ids)
        x = self.drop(x)
        y1, y2 = self.layers(x, x, attention_mask=attention_mask, position_ids=position_ids)
        hidden = self.drop(self.norm_f(torch.cat([y1, y2], dim=-1)))[:, :t]  # (B, T, 2C)
        logits = self.lm_head(hidden[:, -1:] if only_last else hidden)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        return ModelOutput(logits=logits, loss=loss, hidden_states=hidden)

    def _pad_to_chunks(self, input_ids, attention_mask):
        c = self.config
        t = input_ids.size(1)
        extra = -t % c.chunk_multiple
        if t <= c.min_chunk or not extra:
            return input_ids, attention_mask
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return F.pad(input_ids, (0, extra), value=c.pad_id), F.pad(attention_mask, (0, extra), value=0)


PRESETS.update({
    "reformer-nano": ReformerConfig(n_layer=4, n_head=4, d_model=128, max_seq_len=1024, chunk_length=64, n_buckets=32,
                                    n_hashes=2, axial_shape=[32, 32], axial_dims=[64, 64]),
    "reformer-micro": ReformerConfig(n_layer=6, n_head=6, d_model=384, max_seq_len=4096, chunk_length=64,
                                     n_buckets=64, n_hashes=2, axial_shape=[64, 64], axial_dims=[128, 256],
                                     attn_layers=["local", "lsh"] * 3),
    "reformer-tiny": ReformerConfig(vocab_size=64, max_seq_len=64, n_layer=2, attn_layers=["local", "lsh"], n_head=2,
                                    d_model=32, chunk_length=8, local_chunk_length=8, n_buckets=4, hash_seed=0,
                                    axial_shape=[8, 8], axial_dims=[16, 16]),
})

# FSDP shards the reversible stack as one unit: its backward recomputes each block inside one
# autograd function, where no per-block FSDP hook could gather the block's parameters.
register(FamilySpec(ReformerConfig, Reformer, kind=CAUSAL_LM, block_class=ReversibleBlock, tiny_preset="reformer-tiny",
                    example_batch=causal_lm_batch, processor=TextProcessor, fsdp_unit=ReversibleSequence,
                    no_attention_weights="LSH attention scores each query against its hash bucket only, so no "
                    "full attention matrix is ever formed"))
