"""The original Transformer (Vaswani et al. 2017): an encoder of self-attention + FFN layers and
a decoder of masked self-attention + cross-attention + FFN layers, each sub-layer
`LayerNorm(x + Sublayer(x))` (post-LN; pre-LN as an option), sinusoidal positions, embeddings
scaled by sqrt(d_model) and optionally shared between source, target and output, and
label-smoothed cross entropy. MarianMT checkpoints are this model with `position_layout="halves"`,
`activation="silu"` and `output_bias=True`; any post-LN model with `position_layout="halves"`
exports as Marian (with a zero logit bias if it has none).
"""

import dataclasses
import math

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import UserError
from ..layers import FFN_KINDS, SinusoidalPositions, TransformerBlock, VocabProjection, make_norm, padding_mask
from ..layers.attention import BACKENDS
from ..processors import Seq2SeqTokenizers
from .base import PRESETS, SEQ2SEQ, FamilySpec, register, seq2seq_batch
from .seq2seq import Seq2SeqModel

POSITION_LAYOUTS = ("interleaved", "halves")


@dataclasses.dataclass
class TransformerConfig(ModelConfig):
    family = "transformer"
    aliases = {"tie_output": "tie_weights"}
    length_fields = ("max_positions", "max_positions")  # one position table bounds source and target
    vocab_size: int = 256  # the source vocabulary, and the target's when tgt_vocab_size is None
    tgt_vocab_size: int = None
    share_embeddings: bool = True  # one table for source and target tokens (needs one vocabulary)
    tie_weights: bool = True  # the output projection is the target embedding table
    d_model: int = 128
    n_head: int = 4
    ffn_hidden: int = 512
    n_encoder_layer: int = 2
    n_decoder_layer: int = 2
    dropout: float = 0.1
    activation: str = "relu"
    prenorm: bool = False  # False: post-LN as in the paper; True: pre-LN with a final norm per stack
    norm_eps: float = 1e-5
    scale_embedding: bool = True  # multiply embeddings by sqrt(d_model)
    position_layout: str = "interleaved"  # sin/cos interleaved (paper) or in halves (Marian, fairseq)
    max_positions: int = 256  # longest source and longest target, in tokens
    output_bias: bool = False  # a fixed per-token logit bias (Marian's final_logits_bias)
    label_smoothing: float = 0.1
    pad_id: int = 0
    eos_id: int = 1
    decoder_start_id: int = 2
    attn_backend: str = "sdpa"

    def validate(self):
        self.require_positive("vocab_size", "d_model", "n_head", "ffn_hidden", "n_encoder_layer", "n_decoder_layer",
                              "max_positions")
        if self.tgt_vocab_size is not None:
            self.require_positive("tgt_vocab_size")
            if self.share_embeddings and self.tgt_vocab_size != self.vocab_size:
                raise self.invalid("share_embeddings needs one vocabulary: set tgt_vocab_size to vocab_size "
                                   "or share_embeddings to false")
        self.require_divisible("d_model", "n_head")
        self.require_fraction("dropout", "label_smoothing")
        self.require_choice("activation", tuple(FFN_KINDS))
        self.require_choice("position_layout", POSITION_LAYOUTS)
        self.require_choice("attn_backend", BACKENDS)
        for name in ("pad_id", "eos_id", "decoder_start_id"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < min(self.vocab_size, self.target_vocab):
                raise self.invalid(f"{name}={value!r} must be a token id below the vocabulary size")

    def with_depth(self, kept: list):
        raise UserError("a transformer model has two depths (n_encoder_layer, n_decoder_layer), not one to change; "
                        "set both to train a smaller model")

    @property
    def target_vocab(self) -> int:
        return self.tgt_vocab_size or self.vocab_size

    @property
    def max_seq_len(self) -> int:
        return self.max_positions

    @property
    def max_target_len(self) -> int:
        return self.max_positions


class EncoderDecoder(Seq2SeqModel):
    def __init__(self, config: TransformerConfig):
        super().__init__(config)
        c = config
        self.src_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.tgt_emb = self.src_emb if c.share_embeddings else nn.Embedding(c.target_vocab, c.d_model)
        self.positions = SinusoidalPositions(c.max_positions, c.d_model, interleaved=c.position_layout == "interleaved")
        self.embed_scale = math.sqrt(c.d_model) if c.scale_embedding else 1.0
        self.drop = nn.Dropout(c.dropout)

        def stack(n_layer, cross_attention):
            return nn.ModuleList(
                TransformerBlock(c.d_model, c.n_head, c.ffn_hidden, ffn_kind=c.activation, norm="layernorm",
                                 norm_eps=c.norm_eps, prenorm=c.prenorm, dropout=c.dropout,
                                 cross_attention=cross_attention, backend=c.attn_backend)
                for _ in range(n_layer))

        self.encoder_blocks = stack(c.n_encoder_layer, cross_attention=False)
        self.decoder_blocks = stack(c.n_decoder_layer, cross_attention=True)
        # pre-LN leaves the residual stream unnormalised: each stack ends with a norm
        self.encoder_norm = make_norm("layernorm", c.d_model, c.norm_eps) if c.prenorm else nn.Identity()
        self.decoder_norm = make_norm("layernorm", c.d_model, c.norm_eps) if c.prenorm else nn.Identity()
        self.lm_head = VocabProjection(c.d_model, c.target_vocab, bias=False)
        if c.output_bias:
            self.register_buffer("logits_bias", torch.zeros(c.target_vocab))
        else:
            self.logits_bias = None
        self._init_weights()
        if c.tie_weights:
            self.lm_head.weight = self.tgt_emb.weight

    def _init_weights(self):
        """Xavier-uniform projections and zero biases; embeddings N(0, d^-0.5), so that scaled by
        sqrt(d) they have unit variance like the sinusoids they are added to."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, self.config.d_model ** -0.5)

    def _embed(self, table, ids, offset=0):
        positions = torch.arange(offset, offset + ids.size(1), device=ids.device)  # (T,)
        return self.drop(table(ids) * self.embed_scale + self.positions(positions))  # (B, T, C)

    def encode(self, input_ids, attention_mask=None):
        """input_ids (B, S) -> memory (B, S, C)."""
        self.check_source_length(input_ids.size(1))
        x = self._embed(self.src_emb, input_ids)
        mask = padding_mask(attention_mask) if attention_mask is not None else None
        for block in self.encoder_blocks:
            x = block(x, mask=mask)
        return self.encoder_norm(x)

    def decode(self, decoder_input_ids, memory, attention_mask=None, decoder_attention_mask=None, cache=None):
        """decoder_input_ids (B, T) after `cache.length` earlier ones; memory (B, S, C) with its
        attention_mask (B, S); decoder_attention_mask (B, T) for right-padded targets.
        -> logits (B, T, V)."""
        past = cache.length if cache is not None else 0
        if past + decoder_input_ids.size(1) > self.config.max_target_len:
            raise ValueError(f"target of {past + decoder_input_ids.size(1)} tokens exceeds max_positions "
                             f"{self.config.max_target_len}")
        x = self._embed(self.tgt_emb, decoder_input_ids, offset=past)
        memory_mask = padding_mask(attention_mask) if attention_mask is not None else None
        mask = padding_mask(decoder_attention_mask) if decoder_attention_mask is not None else None
        for i, block in enumerate(self.decoder_blocks):
            x = block(x, mask=mask, causal=True, cache=cache, layer_idx=i, memory=memory, memory_mask=memory_mask)
        logits = self.lm_head(self.decoder_norm(x))  # (B, T, V)
        return logits if self.logits_bias is None else logits + self.logits_bias


def _transformer(d_model, n_head, ffn_hidden, n_layer, vocab_size=37000, max_positions=512, dropout=0.1):
    return TransformerConfig(vocab_size=vocab_size, d_model=d_model, n_head=n_head, ffn_hidden=ffn_hidden,
                             n_encoder_layer=n_layer, n_decoder_layer=n_layer, dropout=dropout,
                             max_positions=max_positions)


PRESETS.update({
    # the paper's base and big models (shared 37k BPE vocabulary for WMT en-de)
    "transformer-base": _transformer(512, 8, 2048, 6),
    "transformer-big": _transformer(1024, 16, 4096, 6, dropout=0.3),
    # small enough to train on a laptop CPU in minutes
    "transformer-tiny": _transformer(64, 4, 256, 2, vocab_size=256, max_positions=128),
    "transformer-small": _transformer(256, 4, 1024, 3, vocab_size=8000, max_positions=256),
    # sines and cosines in halves, as MarianMT has them: converts to and from Hugging Face
    "marian-tiny": TransformerConfig(vocab_size=64, d_model=32, n_head=2, ffn_hidden=64, n_encoder_layer=2,
                                     n_decoder_layer=2, max_positions=64, position_layout="halves"),
})

register(FamilySpec(TransformerConfig, EncoderDecoder, kind=SEQ2SEQ, block_class=TransformerBlock,
                    tiny_preset="marian-tiny", example_batch=seq2seq_batch, processor=Seq2SeqTokenizers))
