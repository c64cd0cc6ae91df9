"""GPT: a decoder-only causal language model (GPT-2 and Llama styles from one config)."""

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..layers import (FFN_KINDS, NORMS, KVCache, LearnedPositions, RecomputeState, RotaryEmbedding,
                      SinusoidalPositions, StaticKVCache, TransformerBlock, VocabProjection, causal_mask, combine_masks,
                      make_norm, padding_mask, positions_from_mask)
from ..layers.attention import BACKENDS
from ..layers.sparse_attention import SlidingWindowAttention
from ..processors import TextProcessor
from .base import CAUSAL_LM, PRESETS, FamilySpec, Model, ModelOutput, causal_lm_batch, init_gpt_style, register

POSITIONS = ("learned", "sinusoidal", "rotary", "none")


@dataclasses.dataclass
class GPTConfig(ModelConfig):
    family = "gpt"
    aliases = {"block_size": "max_seq_len"}
    vocab_size: int = 256
    max_seq_len: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = None  # None: as many as n_head; fewer gives grouped-query attention
    d_model: int = 128
    ffn_hidden: int = None  # None: 4 * d_model, or the parameter-matched 8/3 * d_model when gated
    dropout: float = 0.0
    bias: bool = True
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    activation: str = "gelu"
    position: str = "learned"
    rope_base: float = 10000.0
    tie_weights: bool = True
    attn_backend: str = "sdpa"
    attn_window: int = None  # None: full causal attention; w: each token sees itself and the w before it

    def validate(self):
        self.require_positive("vocab_size", "max_seq_len", "n_layer", "n_head", "d_model")
        self.require_divisible("d_model", "n_head")
        if self.n_kv_head is not None:
            self.require_positive("n_kv_head")
            self.require_divisible("n_head", "n_kv_head")
        if self.ffn_hidden is not None:
            self.require_positive("ffn_hidden")
        self.require_fraction("dropout")
        self.require_choice("norm", NORMS)
        self.require_choice("activation", tuple(FFN_KINDS))
        self.require_choice("position", POSITIONS)
        self.require_choice("attn_backend", BACKENDS)
        if self.attn_window is not None:
            self.require_positive("attn_window")
            if self.n_kv_head not in (None, self.n_head):
                raise self.invalid("attn_window (sliding-window attention) needs n_kv_head equal to n_head")
        if self.position == "rotary" and (self.d_model // self.n_head) % 2:
            raise self.invalid("rotary positions need an even head size (d_model / n_head)")

    @property
    def ffn_size(self) -> int:
        if self.ffn_hidden:
            return self.ffn_hidden
        if FFN_KINDS[self.activation][1]:
            return 64 * -(-(8 * self.d_model // 3) // 64)  # 8/3 d rounded up to a multiple of 64
        return 4 * self.d_model


class GPT(Model):
    def __init__(self, config: GPTConfig):
        super().__init__(config)
        c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        added = {"learned": LearnedPositions, "sinusoidal": SinusoidalPositions}  # positions added to the input
        self.pos_emb = added[c.position](c.max_seq_len, c.d_model) if c.position in added else None
        self.rotary = (RotaryEmbedding(c.d_model // c.n_head, c.max_seq_len, c.rope_base)
                       if c.position == "rotary" else None)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(c.d_model, c.n_head, c.ffn_size, ffn_kind=c.activation, norm=c.norm, norm_eps=c.norm_eps,
                             prenorm=True, bias=c.bias, dropout=c.dropout, n_kv_head=c.n_kv_head,
                             backend=c.attn_backend, self_attention=self._sliding_window(c))
            for _ in range(c.n_layer))
        self.norm_f = make_norm(c.norm, c.d_model, c.norm_eps, c.bias)
        self.lm_head = VocabProjection(c.d_model, c.vocab_size, bias=False)
        init_gpt_style(self, c.n_layer)
        if c.tie_weights:
            self.lm_head.weight = self.tok_emb.weight

    def init_state(self, batch: int, capacity: int) -> KVCache:
        """A KV cache for `batch` rows, its buffers sized for `capacity` tokens (they grow past it)."""
        return KVCache(len(self.blocks), capacity, batch=batch, device=self.tok_emb.weight.device)

    def init_static_state(self, batch: int, capacity: int) -> StaticKVCache | None:
        """A KV cache of fixed shapes for a compiled step; none for sliding-window attention, whose
        band reads the keys in order."""
        if self.config.attn_window is not None:
            return None
        return StaticKVCache(len(self.blocks), capacity, batch=batch, device=self.tok_emb.weight.device)

    def forward(self, input_ids, targets=None, attention_mask=None, position_ids=None, state=None,
                only_last=False):
        """input_ids (B, T) -> ModelOutput(logits (B, T, V), loss).

        targets (B, T): the next token at each position (-100 is ignored).
        attention_mask (B, T): 1 for real tokens, 0 for (left) padding.
        state: a decode state from `init_state` (or a RecomputeState) holding the earlier
        tokens; attention_mask then covers the new tokens only (default all real), and
        positions count each row's real tokens over the state's whole mask.
        only_last: compute logits for the last position only (generation).
        """
        if isinstance(state, RecomputeState):
            return state.rerun(self, input_ids, attention_mask, only_last)
        b, t = input_ids.shape
        past = 0  # the state's columns, when no mask counts them
        if state is not None:  # the mask over the state's columns and the new tokens (None: no padding)
            attention_mask = state.begin(input_ids, attention_mask)
            past = state.length if attention_mask is None else 0
        seen = past + t if attention_mask is None else attention_mask.size(1)
        if seen > self.config.max_seq_len:
            raise ValueError(f"sequence of {seen} tokens exceeds max_seq_len {self.config.max_seq_len}")
        if position_ids is None:  # with left padding each row counts its real tokens
            position_ids = positions_from_mask(attention_mask, t) if attention_mask is not None else \
                torch.arange(past, past + t, device=input_ids.device).expand(b, t)
        x = self.tok_emb(input_ids)  # (B, T, C)
        if self.pos_emb is not None:
            x = x + self.pos_emb(position_ids)
        x = self.drop(x)
        mask = padding_mask(attention_mask) if attention_mask is not None else None  # (B, 1, 1, L + T)
        causal = True
        if t > 1 and (mask is not None or seen > t) and self.config.attn_window is None:
            # the mask each layer would otherwise build: (B, 1, T, L + T), or (T, L + T) without padding
            mask, causal = combine_masks(mask, causal_mask(t, seen, device=input_ids.device)), False
        for i, block in enumerate(self.blocks):
            x = block(x, mask=mask, causal=causal, rotary=self.rotary, position_ids=position_ids, cache=state,
                      layer_idx=i)
        x = self.norm_f(x)
        if only_last:
            x = x[:, -1:]
        logits = self.lm_head(x)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        return ModelOutput(logits=logits, loss=loss)

    @staticmethod
    def _sliding_window(c):
        """Causal sliding-window attention (memory O(T * attn_window)) when the config asks for it."""
        if c.attn_window is None:
            return None
        return SlidingWindowAttention(c.d_model, c.n_head, c.attn_window, causal=True, bias=c.bias, dropout=c.dropout,
                                      backend=c.attn_backend)


def _gpt2(n_layer, n_head, d_model, max_seq_len=1024):
    return GPTConfig(vocab_size=50257, max_seq_len=max_seq_len, n_layer=n_layer, n_head=n_head, d_model=d_model,
                     activation="gelu_tanh", norm="layernorm", position="learned", bias=True, tie_weights=True)


def _llama(n_layer, n_head, d_model, n_kv_head=None, ffn_hidden=None, max_seq_len=2048, vocab_size=32000):
    return GPTConfig(vocab_size=vocab_size, max_seq_len=max_seq_len, n_layer=n_layer, n_head=n_head,
                     n_kv_head=n_kv_head, d_model=d_model, ffn_hidden=ffn_hidden, activation="swiglu",
                     norm="rmsnorm", norm_eps=1e-6, position="rotary", bias=False, tie_weights=False)


PRESETS.update({
    "gpt2-nano": _gpt2(4, 4, 128, max_seq_len=256),
    "gpt2-micro": _gpt2(6, 6, 384, max_seq_len=256),
    "gpt2-small": _gpt2(12, 12, 768),
    "gpt2-medium": _gpt2(24, 16, 1024),
    "gpt2-large": _gpt2(36, 20, 1280),
    "llama-nano": _llama(4, 4, 128, n_kv_head=2, max_seq_len=256),
    "llama-micro": _llama(6, 6, 384, n_kv_head=2, max_seq_len=256),
    "llama-small": _llama(12, 12, 768, n_kv_head=4),
    "llama-1b": _llama(16, 32, 2048, n_kv_head=8, ffn_hidden=8192),
    "llama-7b": _llama(32, 32, 4096, ffn_hidden=11008, max_seq_len=4096),
    "gpt-tiny": GPTConfig(vocab_size=64, max_seq_len=64, n_layer=2, n_head=2, d_model=32),
})

register(FamilySpec(GPTConfig, GPT, kind=CAUSAL_LM, block_class=TransformerBlock, tiny_preset="gpt-tiny",
                    example_batch=causal_lm_batch, processor=TextProcessor))
