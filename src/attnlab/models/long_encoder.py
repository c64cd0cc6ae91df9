"""What Longformer and BigBird share: a BERT-shaped encoder whose self-attention is sparse.

    embeddings = LayerNorm(token + learned position + token type)
    blocks     = post-LN TransformerBlock x n_layer, self-attention supplied by the family
    head       = none | mlm | classification ([CLS] -> Linear -> tanh -> Linear)

A family subclasses `LongEncoderConfig` and `LongEncoder` and says three things: which attention
module a layer uses (`make_attention`), how positions are counted (`position_ids`) and what
length the input is padded to (`pad_multiple`). Hugging Face names live in interop/longformer.py and
interop/bigbird.py.
"""

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..layers import FFN_KINDS, TransformerBlock, activation_of
from .base import Model, ModelOutput
from .bert import Embeddings, MLMHead

HEADS = ("none", "mlm", "classification")


@dataclasses.dataclass
class LongEncoderConfig(ModelConfig):
    vocab_size: int = 50265
    max_positions: int = 4098
    n_layer: int = 12
    n_head: int = 12
    d_model: int = 768
    ffn_hidden: int = None  # None: 4 * d_model
    type_vocab_size: int = 1
    activation: str = "gelu"
    norm_eps: float = 1e-5
    dropout: float = 0.1
    attn_dropout: float = 0.1
    pad_token_id: int = 1
    head: str = "none"
    n_labels: int = 2
    id2label: dict = None  # str(class index) -> label name; None: LABEL_0, LABEL_1, ...

    def validate(self):
        self.require_positive("vocab_size", "max_positions", "n_layer", "n_head", "d_model", "type_vocab_size",
                              "n_labels")
        self.require_divisible("d_model", "n_head")
        self.require_index_names("id2label", self.n_labels)
        if self.ffn_hidden is not None:
            self.require_positive("ffn_hidden")
        self.require_fraction("dropout", "attn_dropout")
        self.require_choice("activation", tuple(k for k, (_, gated) in FFN_KINDS.items() if not gated))
        self.require_choice("head", HEADS)
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise self.invalid(f"pad_token_id {self.pad_token_id} is outside the vocabulary of {self.vocab_size}")

    @property
    def ffn_size(self) -> int:
        return self.ffn_hidden or 4 * self.d_model


class ClassificationHead(nn.Module):
    """[CLS] -> dropout -> Linear -> activation -> dropout -> Linear (tanh: the RoBERTa / Longformer
    head; BigBird uses its feed-forward activation)."""

    def __init__(self, c: LongEncoderConfig, activation):
        super().__init__()
        self.activation = activation
        self.dense = nn.Linear(c.d_model, c.d_model)
        self.out = nn.Linear(c.d_model, c.n_labels)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, hidden):
        return self.out(self.drop(self.activation(self.dense(self.drop(hidden[:, 0])))))  # (B, n_labels)


class LongEncoder(Model):
    classifier_activation = "tanh"  # a feed-forward activation name, or "tanh"

    def __init__(self, config: LongEncoderConfig):
        super().__init__(config)
        c = config
        self.embeddings = Embeddings(c)
        self.blocks = nn.ModuleList(
            TransformerBlock(c.d_model, c.n_head, c.ffn_size, ffn_kind=c.activation, norm="layernorm",
                             norm_eps=c.norm_eps, prenorm=False, dropout=c.dropout,
                             self_attention=self.make_attention(c, i))
            for i in range(c.n_layer))
        self.mlm = MLMHead(c) if c.head == "mlm" else None
        activation = torch.tanh if self.classifier_activation == "tanh" else activation_of(self.classifier_activation)
        self.classifier = ClassificationHead(c, activation) if c.head == "classification" else None
        self.apply(_init_weights)
        if self.mlm is not None:
            self.mlm.decoder.weight = self.embeddings.tok.weight

    # -- what a family decides ------------------------------------------------------------------
    @staticmethod
    def make_attention(c, layer: int) -> nn.Module:
        raise NotImplementedError

    def position_ids(self, input_ids):
        raise NotImplementedError

    def pad_multiple(self, t: int) -> int:
        return 1

    def attention_kwargs(self, key_mask, global_attention_mask) -> dict:
        return {"key_mask": key_mask}

    # -- shared ---------------------------------------------------------------------------------
    def encode(self, input_ids, attention_mask=None, token_type_ids=None, global_attention_mask=None):
        """input_ids (B, T) -> hidden states (B, T, C). attention_mask: 1 real, 0 padding."""
        b, t = input_ids.shape
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        token_type_ids = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        pad = -t % self.pad_multiple(t)
        if pad:  # the pattern needs whole blocks: pad with masked pad tokens, cut them off at the end
            input_ids = F.pad(input_ids, (0, pad), value=self.config.pad_token_id)
            attention_mask, token_type_ids = F.pad(attention_mask, (0, pad)), F.pad(token_type_ids, (0, pad))
            if global_attention_mask is not None:
                global_attention_mask = F.pad(global_attention_mask, (0, pad))
        position_ids = self.position_ids(input_ids)
        if int(position_ids.max()) >= self.config.max_positions:
            raise ValueError(f"sequence of {t} tokens needs more than the {self.config.max_positions} positions")
        x = self.embeddings(input_ids, token_type_ids, position_ids)  # (B, T, C)
        key_mask = attention_mask.bool()
        attn_kwargs = self.attention_kwargs(key_mask, global_attention_mask)
        for block in self.blocks:
            x = block(x, **attn_kwargs)
        return x[:, :t]

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, global_attention_mask=None, labels=None):
        """-> ModelOutput(logits, loss, hidden_states (B, T, C)).

        global_attention_mask (B, T): 1 for tokens that attend to all and are attended by all
        (Longformer); the classification head makes [CLS] global when none is given.
        labels: token ids to predict (-100 ignored) for mlm; class ids (B,) for classification.
        """
        if self.classifier is not None and global_attention_mask is None:
            global_attention_mask = torch.zeros_like(input_ids)
            global_attention_mask[:, 0] = 1
        hidden = self.encode(input_ids, attention_mask, token_type_ids, global_attention_mask)
        out = ModelOutput(hidden_states=hidden)
        if self.mlm is not None:
            out.logits = self.mlm(hidden)
        elif self.classifier is not None:
            out.logits = self.classifier(hidden)
        if labels is not None and out.logits is not None:
            out.loss = F.cross_entropy(out.logits.reshape(-1, out.logits.size(-1)), labels.reshape(-1),
                                       ignore_index=-100)
        return out


def _init_weights(module, std=0.02):
    """BERT's initialisation: Normal(0, 0.02) weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, 0.0, std)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
