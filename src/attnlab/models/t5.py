"""T5 (Raffel et al. 2020): the text-to-text encoder-decoder.

Pre-norm blocks with an RMS norm (no mean, no bias), no biases anywhere, unscaled attention
(the 1/sqrt(d) is folded into the initialisation), and no position embeddings: a learned
relative position bias with log-spaced buckets, computed once per stack from its first layer's
table and added to the attention scores of every layer. Feed-forward: ReLU (T5) or gated GELU
(T5 v1.1, Flan-T5). With tied embeddings the decoder output is scaled by d_model^-0.5.
"""

import dataclasses

from torch import nn

from ..config import ModelConfig
from ..errors import UserError
from ..layers import MultiHeadAttention, RelativePositionBias, TransformerBlock, VocabProjection, padding_mask
from ..layers.attention import BACKENDS
from ..layers.norms import RMSNorm
from ..processors import Seq2SeqTokenizers
from .base import PRESETS, SEQ2SEQ, FamilySpec, register, seq2seq_batch
from .seq2seq import Seq2SeqModel

ACTIVATIONS = ("relu", "geglu")


@dataclasses.dataclass
class T5Config(ModelConfig):
    family = "t5"
    aliases = {"d_ff": "ffn_hidden", "d_kv": "head_dim", "tie_word_embeddings": "tie_weights",
               "max_source_len": "max_seq_len"}
    length_fields = ("max_seq_len", "max_target_len")  # what sets the longest (source, target)
    vocab_size: int = 32128
    d_model: int = 512
    head_dim: int = 64  # size of each attention head
    ffn_hidden: int = 2048
    n_layer: int = 6
    n_decoder_layer: int = None  # None: as many as n_layer
    n_head: int = 8
    num_buckets: int = 32
    max_distance: int = 128
    dropout: float = 0.1
    norm_eps: float = 1e-6
    activation: str = "relu"  # relu (T5) or geglu (T5 v1.1 "gated-gelu")
    tie_weights: bool = True  # output = embedding table, decoder output scaled by d_model^-0.5
    max_seq_len: int = 512  # no position table limits T5; this is the longest source accepted
    max_target_len: int = 512
    label_smoothing: float = 0.0
    pad_id: int = 0
    eos_id: int = 1
    decoder_start_id: int = 0
    attn_backend: str = "sdpa"

    def with_depth(self, kept: list):
        raise UserError("a t5 model has two depths (n_layer for the encoder, n_decoder_layer for the decoder), not one "
                        "to change; set both to train a smaller model")

    def validate(self):
        self.require_positive("vocab_size", "d_model", "head_dim", "ffn_hidden", "n_layer", "n_head", "num_buckets",
                              "max_distance", "max_seq_len", "max_target_len")
        if self.n_decoder_layer is not None:
            self.require_positive("n_decoder_layer")
        self.require_fraction("dropout", "label_smoothing")
        self.require_choice("activation", ACTIVATIONS)
        self.require_choice("attn_backend", BACKENDS)
        if self.num_buckets < 4:
            raise self.invalid("num_buckets must be at least 4")
        for name in ("pad_id", "eos_id", "decoder_start_id"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < self.vocab_size:
                raise self.invalid(f"{name}={value!r} must be a token id below vocab_size")


class T5(Seq2SeqModel):
    def __init__(self, config: T5Config):
        super().__init__(config)
        c = config

        def stack(n_layer, cross_attention):
            return nn.ModuleList(
                TransformerBlock(c.d_model, c.n_head, c.ffn_hidden, ffn_kind=c.activation, norm="rmsnorm",
                                 norm_eps=c.norm_eps, prenorm=True, bias=False, dropout=c.dropout,
                                 cross_attention=cross_attention, attn_scale=1.0, head_dim=c.head_dim,
                                 backend=c.attn_backend)
                for _ in range(n_layer))

        self.shared = nn.Embedding(c.vocab_size, c.d_model)
        self.drop = nn.Dropout(c.dropout)
        self.encoder_bias = RelativePositionBias(c.n_head, c.num_buckets, c.max_distance, bidirectional=True)
        self.encoder_blocks = stack(c.n_layer, cross_attention=False)
        self.encoder_norm = RMSNorm(c.d_model, c.norm_eps)
        self.decoder_bias = RelativePositionBias(c.n_head, c.num_buckets, c.max_distance, bidirectional=False)
        self.decoder_blocks = stack(c.n_decoder_layer or c.n_layer, cross_attention=True)
        self.decoder_norm = RMSNorm(c.d_model, c.norm_eps)
        self.lm_head = VocabProjection(c.d_model, c.vocab_size, bias=False)
        self._init_weights()
        if c.tie_weights:
            self.lm_head.weight = self.shared.weight
        for module in self.modules():  # every layer adds the same per-head position bias: no layer can lose a head
            if isinstance(module, MultiHeadAttention):
                module.prunable_heads = False

    def _init_weights(self):
        """Mesh TensorFlow's scheme: each projection N(0, fan_in^-0.5), with the query's also
        carrying the 1/sqrt(head_dim) that the attention itself leaves out."""
        c = self.config
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                std = module.in_features ** -0.5
                if name.endswith("q_proj"):
                    std = (c.d_model * c.head_dim) ** -0.5
                nn.init.normal_(module.weight, 0.0, std)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, 1.0)

    def encode(self, input_ids, attention_mask=None):
        """input_ids (B, S) -> memory (B, S, C)."""
        self.check_source_length(input_ids.size(1))
        x = self.drop(self.shared(input_ids))
        t = input_ids.size(1)
        bias = self.encoder_bias(t, t)  # (1, H, S, S), shared by every layer
        mask = padding_mask(attention_mask) if attention_mask is not None else None
        for block in self.encoder_blocks:
            x = block(x, mask=mask, bias=bias)
        return self.drop(self.encoder_norm(x))

    def decode(self, decoder_input_ids, memory, attention_mask=None, decoder_attention_mask=None, cache=None):
        """As EncoderDecoder.decode: decoder_input_ids (B, T) after `cache.length` earlier ones
        -> logits (B, T, V)."""
        past = cache.length if cache is not None else 0
        t = decoder_input_ids.size(1)
        x = self.drop(self.shared(decoder_input_ids))
        bias = self.decoder_bias(t, past + t, offset=past)  # (1, H, T, past + T)
        memory_mask = padding_mask(attention_mask) if attention_mask is not None else None
        mask = padding_mask(decoder_attention_mask) if decoder_attention_mask is not None else None
        for i, block in enumerate(self.decoder_blocks):
            x = block(x, mask=mask, causal=True, bias=bias, cache=cache, layer_idx=i, memory=memory,
                      memory_mask=memory_mask)
        x = self.drop(self.decoder_norm(x))
        if self.config.tie_weights:
            x = x * self.config.d_model ** -0.5
        return self.lm_head(x)  # (B, T, V)


def _t5(d_model, ffn_hidden, n_layer, n_head, activation="relu", head_dim=64, vocab_size=32128, **fields):
    return T5Config(vocab_size=vocab_size, d_model=d_model, head_dim=head_dim, ffn_hidden=ffn_hidden, n_layer=n_layer,
                    n_head=n_head, activation=activation, tie_weights=activation == "relu", **fields)


PRESETS.update({
    "t5-small": _t5(512, 2048, 6, 8),
    "t5-base": _t5(768, 3072, 12, 12),
    "t5-v1_1-small": _t5(512, 1024, 8, 6, activation="geglu", n_decoder_layer=8),
    "t5-tiny": _t5(64, 256, 2, 4, head_dim=16, vocab_size=256, max_seq_len=128, max_target_len=128),
})

register(FamilySpec(T5Config, T5, kind=SEQ2SEQ, block_class=TransformerBlock, tiny_preset="t5-tiny",
                    example_batch=seq2seq_batch, processor=Seq2SeqTokenizers))
