"""Transformer-XL (Dai et al. 2019): a causal LM with segment-level recurrence and relative
positional encoding.

A long input is processed `segment_length` tokens at a time. Each layer attends over its
memory (the inputs it saw for the last `mem_len` tokens, cached without gradient) followed
by the current segment, scoring keys by content and by relative distance
(layers/relative_attention.py). `forward` returns the memory after the last segment, so a
text of any length can be scored segment by segment (`memory=` in, `.memory` out); generation and
perplexity carry it in a decode state (`init_state`: a `HiddenMemory`, recurrent).
"""

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..layers import FFN_KINDS, DecodeState, FeedForward, HiddenMemory, RecomputeState, make_norm
from ..layers.attention import BACKENDS
from ..layers.relative_attention import RelativeMultiHeadAttention, relative_sinusoids
from ..processors import TextProcessor
from .base import CAUSAL_LM, PRESETS, FamilySpec, Model, ModelOutput, causal_lm_batch, init_gpt_style, register


@dataclasses.dataclass
class TransformerXLConfig(ModelConfig):
    family = "transformer_xl"
    aliases = {"block_size": "max_seq_len"}
    vocab_size: int = 256
    max_seq_len: int = 512  # tokens per training sample / generation window (any number of segments)
    segment_length: int = 128
    mem_len: int = 128  # cached tokens per layer; 0 disables the recurrence
    n_layer: int = 4
    n_head: int = 4
    head_dim: int = None  # None: d_model / n_head
    d_model: int = 128
    ffn_hidden: int = None  # None: 4 * d_model
    activation: str = "relu"
    prenorm: bool = False  # the paper's post-LN by default
    norm_eps: float = 1e-5
    dropout: float = 0.0
    attn_dropout: float = 0.0
    tie_weights: bool = True
    attn_backend: str = "sdpa"

    def validate(self):
        self.require_positive("vocab_size", "max_seq_len", "segment_length", "n_layer", "n_head", "d_model")
        if not isinstance(self.mem_len, int) or self.mem_len < 0:
            raise self.invalid(f"mem_len must be a non-negative integer, got {self.mem_len!r}")
        if self.head_dim is not None:
            self.require_positive("head_dim")
        elif self.d_model % self.n_head:
            raise self.invalid(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head}), or set head_dim")
        if self.ffn_hidden is not None:
            self.require_positive("ffn_hidden")
        if self.d_model % 2:
            raise self.invalid(f"d_model must be even for the sinusoidal distance encoding, got {self.d_model}")
        self.require_choice("activation", tuple(k for k, (_, gated) in FFN_KINDS.items() if not gated))
        self.require_choice("attn_backend", BACKENDS)
        self.require_fraction("dropout", "attn_dropout")


@dataclasses.dataclass
class TransformerXLOutput(ModelOutput):
    memory: list = None  # per layer (B, M, C), detached


class RelativeBlock(nn.Module):
    """Relative self-attention over [memory; x] and a feed-forward, each with a residual."""

    def __init__(self, c: TransformerXLConfig):
        super().__init__()
        self.prenorm = c.prenorm
        self.attn = RelativeMultiHeadAttention(c.d_model, c.n_head, c.head_dim, c.attn_dropout, c.attn_backend)
        self.ffn = FeedForward(c.d_model, c.ffn_hidden or 4 * c.d_model, c.activation, dropout=c.dropout)
        self.norm_attn = make_norm("layernorm", c.d_model, c.norm_eps)
        self.norm_ffn = make_norm("layernorm", c.d_model, c.norm_eps)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x, memory, mask, pos_emb):
        if self.prenorm:
            memory = None if memory is None else self.norm_attn(memory)
            x = x + self.dropout(self.attn(self.norm_attn(x), mask=mask, memory=memory, pos_emb=pos_emb))
            return x + self.dropout(self.ffn(self.norm_ffn(x)))
        x = self.norm_attn(x + self.dropout(self.attn(x, mask=mask, memory=memory, pos_emb=pos_emb)))
        return self.norm_ffn(x + self.dropout(self.ffn(x)))


class TransformerXL(Model):
    def __init__(self, config: TransformerXLConfig):
        super().__init__(config)
        c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(RelativeBlock(c) for _ in range(c.n_layer))
        self.norm_f = make_norm("layernorm", c.d_model, c.norm_eps) if c.prenorm else nn.Identity()
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        init_gpt_style(self, c.n_layer)
        if c.tie_weights:
            self.lm_head.weight = self.tok_emb.weight

    def init_state(self, batch: int, capacity: int) -> DecodeState:
        """Its memory (fixed in size: generation never restarts); with mem_len 0 there is none
        and each step re-reads the context window. `capacity` does not apply."""
        weight = self.tok_emb.weight
        if not self.config.mem_len:
            return RecomputeState(batch, weight.device)
        return HiddenMemory(len(self.blocks), batch, self.config.d_model, weight.device, weight.dtype)

    def forward(self, input_ids, targets=None, attention_mask=None, memory=None, position_ids=None, state=None,
                only_last=False):
        """input_ids (B, T) -> TransformerXLOutput(logits (B, T, V), loss, hidden_states, memory).

        memory: the `.memory` of the previous call (the text continues), or None.
        attention_mask (B, T): 1 for real tokens, 0 for padding (keys never attended).
        state: a decode state from `init_state`, which reads and then keeps the memory (with
        its padding masked out); attention_mask covers the new tokens only.
        position_ids are not used: positions are relative.
        """
        if isinstance(state, RecomputeState):
            return state.rerun(self, input_ids, attention_mask, only_last)
        x = self.drop(self.tok_emb(input_ids))  # (B, T, C)
        memory_mask = None
        if state is not None:
            memory = state.memory
            if attention_mask is not None or not bool(state.mask.all()):  # else nothing to mask: the fast path
                attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
                memory_mask = state.mask
        elif attention_mask is not None and memory is not None:
            memory_mask = attention_mask.new_ones(x.size(0), memory[0].size(1))
        hidden = []
        for start in range(0, x.size(1), self.config.segment_length):
            end = start + self.config.segment_length
            mask = None
            if attention_mask is not None:
                keys = attention_mask[:, start:end] if memory_mask is None else \
                    torch.cat([memory_mask, attention_mask[:, start:end]], dim=1)
                mask = self._segment_mask(x[:, start:end].size(1), keys)
                memory_mask = keys[:, -self.config.mem_len:] if self.config.mem_len else None
            h, memory = self.run_segment(x[:, start:end], memory, mask)
            hidden.append(h)
        if state is not None:
            state.update(memory, memory_mask)
        hidden = torch.cat(hidden, dim=1)
        logits = self.lm_head(hidden[:, -1:] if only_last else hidden)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        return TransformerXLOutput(logits=logits, loss=loss, hidden_states=hidden, memory=memory)

    @staticmethod
    def _segment_mask(t, key_mask):
        """Causal over [memory; segment] and no padding keys -> (B, 1, T, K) bool."""
        k = key_mask.size(1)
        causal = torch.ones(t, k, dtype=torch.bool, device=key_mask.device).tril(k - t)
        return causal & key_mask.bool()[:, None, None, :]

    def run_segment(self, x, memory=None, mask=None):
        """One segment: x (B, T, C) embedded; memory a list of (B, M, C) per layer or None;
        mask (bool, True = visible) over [memory; x], default causal.
        -> (hidden (B, T, C), the memory for the next segment)."""
        m = 0 if memory is None else memory[0].size(1)
        pos_emb = relative_sinusoids(m + x.size(1), x.size(-1), x.device)
        new_memory = []
        h = x
        for i, block in enumerate(self.blocks):
            layer_memory = None if memory is None else memory[i]
            new_memory.append(self._remember(layer_memory, h))
            h = block(h, layer_memory, mask, pos_emb)
        return self.drop(self.norm_f(h)), (new_memory if self.config.mem_len else None)

    def _remember(self, memory, h):
        """The last mem_len inputs of this layer, without gradient."""
        if not self.config.mem_len:
            return None
        both = h if memory is None else torch.cat([memory, h], dim=1)
        return both[:, -self.config.mem_len:].detach()


PRESETS.update({
    "transformer-xl-nano": TransformerXLConfig(n_layer=4, n_head=4, d_model=128, max_seq_len=512, segment_length=128,
                                               mem_len=128),
    "transformer-xl-micro": TransformerXLConfig(n_layer=6, n_head=6, d_model=384, max_seq_len=1024, segment_length=256,
                                                mem_len=256),
    "transformer-xl-tiny": TransformerXLConfig(vocab_size=64, max_seq_len=64, segment_length=16, mem_len=64, n_layer=2,
                                               n_head=2, d_model=32),
})

register(FamilySpec(TransformerXLConfig, TransformerXL, kind=CAUSAL_LM, block_class=RelativeBlock,
                    tiny_preset="transformer-xl-tiny", example_batch=causal_lm_batch, processor=TextProcessor))
