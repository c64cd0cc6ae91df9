"""Mamba: a causal LM of selective state-space layers (Gu & Dao 2023), optionally hybrid.

Each block is pre-norm and residual, x + Mixer(RMSNorm(x)), the residual stream optionally kept
in float32; the mixer is the selective SSM (layers/selective_scan.py), or, at the depths listed in
`attn_layers`, causal multi-head self-attention without positions (Jamba-style hybrids: the SSM
layers carry order). Embeddings are tied to the output head. The decode state (`SSMState`) holds
each SSM layer's conv window and state: fixed in size, so generation has no context limit and
memory per new token is constant; a hybrid adds a KV cache for its attention layers.
"""

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..layers import KVCache, MultiHeadAttention, RecomputeState, RMSNorm, VocabProjection, padding_mask
from ..layers.attention import BACKENDS
from ..layers.selective_scan import SCANS, SelectiveSSM, SSMState
from ..processors import TextProcessor
from .base import CAUSAL_LM, PRESETS, FamilySpec, Model, ModelOutput, causal_lm_batch, register


@dataclasses.dataclass
class MambaConfig(ModelConfig):
    family = "mamba"
    vocab_size: int = 256
    max_seq_len: int = 256  # the training and evaluation block; generation is not limited by it
    n_layer: int = 4
    d_model: int = 128
    d_state: int = 16  # N, the state size per inner channel
    d_conv: int = 4  # K, the causal conv's width
    expand: int = 2  # inner width D = expand * d_model
    dt_rank: int = None  # None: ceil(d_model / 16)
    bias: bool = False  # in_proj and out_proj biases
    conv_bias: bool = True
    norm_eps: float = 1e-5
    residual_in_fp32: bool = True
    tie_weights: bool = True
    dropout: float = 0.0  # on each mixer's output
    scan: str = "fused"  # or sequential, chunked, associative: equal results; fused is fastest on CPU (RESULTS.md)
    selective: bool = True  # False: the ablation with input-independent delta, B, C
    attn_layers: list = None  # depths (0-based) whose mixer is self-attention: a hybrid
    n_head: int = 4  # heads of the attention layers
    attn_backend: str = "sdpa"

    def validate(self):
        self.require_positive("vocab_size", "max_seq_len", "n_layer", "d_model", "d_state", "d_conv", "expand",
                              "n_head")
        if self.dt_rank is not None:
            self.require_positive("dt_rank")
        self.require_fraction("dropout")
        self.require_choice("scan", SCANS)
        self.require_choice("attn_backend", BACKENDS)
        layers = self.attn_layers or []
        if not isinstance(layers, list) or not all(isinstance(i, int) and 0 <= i < self.n_layer for i in layers):
            raise self.invalid(f"attn_layers must list layer indices in [0, {self.n_layer}), got {self.attn_layers!r}")
        if layers:
            self.require_divisible("d_model", "n_head")

    @property
    def attention_at(self) -> set:
        return set(self.attn_layers or [])

    def with_depth(self, kept: list):
        attention = [new for new, old in enumerate(kept) if old in self.attention_at]
        return self.replace(n_layer=len(kept), attn_layers=attention or None)


class MambaBlock(nn.Module):
    """x + Dropout(Mixer(RMSNorm(x))). `slot`: the block's index among the layers of its mixer's
    kind, which is where its part of the decode state lives."""

    def __init__(self, c: MambaConfig, attention: bool, slot: int):
        super().__init__()
        self.norm = RMSNorm(c.d_model, c.norm_eps)
        self.attention, self.slot, self.residual_in_fp32 = attention, slot, c.residual_in_fp32
        if attention:
            self.mixer = MultiHeadAttention(c.d_model, c.n_head, bias=c.bias, backend=c.attn_backend)
        else:
            self.mixer = SelectiveSSM(c.d_model, c.d_state, c.d_conv, c.expand, c.dt_rank, bias=c.bias,
                                      conv_bias=c.conv_bias, scan=c.scan, selective=c.selective)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x, mask=None, attn_mask=None, state: SSMState = None):
        """x (B, T, C); mask (B, T) of the new tokens (None: all real); attn_mask (B, 1, 1, L) for
        attention over every cached column -> (B, T, C)."""
        residual = x.to(torch.promote_types(x.dtype, torch.float32)) if self.residual_in_fp32 else x
        h = self.norm(x.to(self.norm.weight.dtype))
        if self.attention:
            h = self.mixer(h, mask=attn_mask, causal=True, cache=None if state is None else state.kv,
                           layer_idx=self.slot)
        elif state is None:
            h = self.mixer(h, mask)[0]
        else:
            h, state.conv[self.slot], state.ssm[self.slot] = self.mixer(h, mask, state.conv[self.slot],
                                                                      state.ssm[self.slot])
        return residual + self.dropout(h)


class Mamba(Model):
    def __init__(self, config: MambaConfig):
        super().__init__(config)
        c = config
        self.embedding = nn.Embedding(c.vocab_size, c.d_model)
        kinds = [i in c.attention_at for i in range(c.n_layer)]
        self.blocks = nn.ModuleList(MambaBlock(c, attention, kinds[:i].count(attention))
                                    for i, attention in enumerate(kinds))
        self.norm_f = RMSNorm(c.d_model, c.norm_eps)
        self.lm_head = VocabProjection(c.d_model, c.vocab_size, bias=False)
        self._init_weights()
        if c.tie_weights:
            self.lm_head.weight = self.embedding.weight

    def _init_weights(self):
        """mamba_ssm's: PyTorch's default linears and convs, embeddings N(0, 0.02), delta's bias
        log-uniform in [1e-3, 0.1], out_proj scaled by 1/sqrt(n_layer) (one residual per layer)."""
        nn.init.normal_(self.embedding.weight, std=0.02)
        for block in self.blocks:
            if not block.attention:
                block.mixer.init_dt()
            with torch.no_grad():
                block.mixer.out_proj.weight /= math.sqrt(self.config.n_layer)

    @property
    def ssm_blocks(self) -> list:
        return [b for b in self.blocks if not b.attention]

    def init_state(self, batch: int, capacity: int) -> SSMState:
        """Zero conv windows and states for `batch` rows; a KV cache for a hybrid's attention layers
        (`capacity` sizes its buffers; they grow past it)."""
        weight = self.embedding.weight
        zeros = [b.mixer.new_state(batch, weight.device, weight.dtype) for b in self.ssm_blocks]
        n_attention = len(self.config.attention_at)
        kv = KVCache(n_attention, capacity, batch=batch, device=weight.device) if n_attention else None
        return SSMState([z[0] for z in zeros], [z[1] for z in zeros], kv)

    def init_static_state(self, batch: int, capacity: int) -> SSMState | None:
        """The recurrent state keeps its shapes while decoding, so a compiled step takes it as it is;
        a hybrid's KV cache grows, so hybrids decode eagerly."""
        return None if self.config.attention_at else self.init_state(batch, capacity)

    def forward(self, input_ids, targets=None, attention_mask=None, position_ids=None, state=None, only_last=False):
        """input_ids (B, T) -> ModelOutput(logits (B, T, V), loss, hidden_states (B, T, C)).

        attention_mask (B, T): 1 for real tokens, 0 for left padding (None: all real); the state
        skips padding, so a left-padded row gives the logits of the row alone. state: an SSMState
        from `init_state` continuing earlier tokens (or a RecomputeState). position_ids are
        accepted for the shared signature and unused: order comes from the scan.
        """
        if isinstance(state, RecomputeState):
            return state.rerun(self, input_ids, attention_mask, only_last)
        mask = None if attention_mask is None else attention_mask.to(self.embedding.weight.dtype)
        attn_mask = self._attention_mask(input_ids, attention_mask, state)
        x = self.embedding(input_ids)  # (B, T, C)
        for block in self.blocks:
            x = block(x, mask, attn_mask, state)
        hidden = self.norm_f(x)
        logits = self.lm_head(hidden[:, -1:] if only_last else hidden)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), targets.reshape(-1), ignore_index=-100)
        return ModelOutput(logits=logits, loss=loss, hidden_states=hidden)

    def _attention_mask(self, input_ids, attention_mask, state):
        """The (B, 1, 1, L) key mask of a hybrid's attention layers, over the cached columns too."""
        if not self.config.attention_at:
            return None
        if state is not None:
            attention_mask = state.kv.begin(input_ids, attention_mask)  # None: no column is padding
        return None if attention_mask is None else padding_mask(attention_mask)


def _hf_like(n_layer, d_model, vocab_size=50280, max_seq_len=2048):
    return MambaConfig(vocab_size=vocab_size, max_seq_len=max_seq_len, n_layer=n_layer, d_model=d_model)


PRESETS.update({
    "mamba-tiny": MambaConfig(vocab_size=64, max_seq_len=64, n_layer=2, d_model=32, d_state=8),
    "mamba-hybrid-tiny": MambaConfig(vocab_size=64, max_seq_len=64, n_layer=3, d_model=32, d_state=8,
                                     attn_layers=[1], n_head=2),
    "mamba-nano": MambaConfig(vocab_size=256, max_seq_len=256, n_layer=4, d_model=128),
    "mamba-130m": _hf_like(24, 768),
    "mamba-370m": _hf_like(48, 1024),
    "mamba-790m": _hf_like(48, 1536),
})

register(FamilySpec(MambaConfig, Mamba, kind=CAUSAL_LM, block_class=MambaBlock, tiny_preset="mamba-tiny",
                    example_batch=causal_lm_batch, processor=TextProcessor,
                    no_attention_weights="a selective state space mixes tokens through a recurrence, not attention"))
