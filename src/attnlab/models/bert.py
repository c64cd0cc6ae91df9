"""BERT-style bidirectional encoders: BERT, RoBERTa, DistilBERT and MiniLM from one config.

    embeddings = LayerNorm(token + position [+ token type])     learned absolute positions
    blocks     = post-LN TransformerBlock x n_layer               bidirectional, padding masked
    pooler     = activation(Linear(hidden[:, 0] or masked mean))  optional (sentence summary)
    head       = none | mlm | pretraining (mlm + nsp) | sequence | token | qa

The families differ only in config fields:
- BERT / MiniLM: token types, tanh pooler.
- RoBERTa: positions counted from pad_token_id + 1 over the non-padding tokens
  (position_style="roberta"); its classification head is a tanh pooler + linear.
- DistilBERT: no token types, no pooler for the encoder; its classification head is a
  ReLU pooler + linear.
"""

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..layers import FFN_KINDS, LearnedPositions, TransformerBlock, activation_of, mean_pool, padding_mask
from ..layers.attention import BACKENDS
from ..processors import TextProcessor
from .base import ENCODER, PRESETS, FamilySpec, Model, ModelOutput, mlm_batch, register

HEADS = ("none", "mlm", "pretraining", "sequence", "token", "qa")
POSITION_STYLES = ("absolute", "roberta")
POOLER_ACTIVATIONS = {"tanh": torch.tanh, "relu": F.relu}
POOLINGS = ("cls", "mean")  # what the pooler reads: the [CLS] state, or the mean of the real tokens


@dataclasses.dataclass
class BertConfig(ModelConfig):
    family = "bert"
    vocab_size: int = 30522
    max_positions: int = 512  # rows of the position table (RoBERTa: usable length + pad_token_id + 1)
    n_layer: int = 12
    n_head: int = 12
    d_model: int = 768
    ffn_hidden: int = None  # None: 4 * d_model
    type_vocab_size: int = 2  # 0: no token type embeddings (DistilBERT)
    activation: str = "gelu"  # feed-forward and MLM transform
    norm_eps: float = 1e-12
    dropout: float = 0.1
    attn_dropout: float = 0.1
    pad_token_id: int = 0
    position_style: str = "absolute"
    pooler: bool = True
    pooler_activation: str = "tanh"
    pooling: str = "cls"  # "mean" suits sentence-embedding checkpoints such as all-MiniLM-L6-v2
    head: str = "none"
    n_labels: int = 2  # sequence / token classification; 1 = regression (MSE) for sequence
    id2label: dict = None  # str(class index) -> label name; None: LABEL_0, LABEL_1, ...
    tie_weights: bool = True  # MLM decoder shares the token embedding matrix
    attn_backend: str = "sdpa"

    def validate(self):
        self.require_positive("vocab_size", "max_positions", "n_layer", "n_head", "d_model", "n_labels")
        self.require_divisible("d_model", "n_head")
        self.require_index_names("id2label", self.n_labels)
        if self.ffn_hidden is not None:
            self.require_positive("ffn_hidden")
        if not isinstance(self.type_vocab_size, int) or self.type_vocab_size < 0:
            raise self.invalid(f"type_vocab_size must be an integer >= 0, got {self.type_vocab_size!r}")
        self.require_fraction("dropout", "attn_dropout")
        self.require_choice("activation", tuple(k for k, (_, gated) in FFN_KINDS.items() if not gated))
        self.require_choice("position_style", POSITION_STYLES)
        self.require_choice("pooler_activation", tuple(POOLER_ACTIVATIONS))
        self.require_choice("pooling", POOLINGS)
        self.require_choice("head", HEADS)
        self.require_choice("attn_backend", BACKENDS)
        if self.head in ("pretraining", "sequence") and not self.pooler:
            raise self.invalid(f"head={self.head!r} reads the pooled vector; set pooler=true")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise self.invalid(f"pad_token_id {self.pad_token_id} is outside the vocabulary of {self.vocab_size}")

    @property
    def ffn_size(self) -> int:
        return self.ffn_hidden or 4 * self.d_model

    @property
    def max_seq_len(self) -> int:
        """The longest input the position table covers."""
        offset = self.pad_token_id + 1 if self.position_style == "roberta" else 0
        return self.max_positions - offset


class Embeddings(nn.Module):
    """token + learned position (+ token type) -> LayerNorm -> dropout. Shared with the long
    encoders, which pass their own position_ids."""

    def __init__(self, c: BertConfig):
        super().__init__()
        self.c = c
        self.tok = nn.Embedding(c.vocab_size, c.d_model, padding_idx=c.pad_token_id)
        self.pos = LearnedPositions(c.max_positions, c.d_model)
        self.types = nn.Embedding(c.type_vocab_size, c.d_model) if c.type_vocab_size else None
        self.norm = nn.LayerNorm(c.d_model, eps=c.norm_eps)
        self.drop = nn.Dropout(c.dropout)

    def position_ids(self, input_ids):
        """(B, T) positions; RoBERTa counts real tokens from pad_token_id + 1 and gives padding pad_token_id."""
        if self.c.position_style == "roberta":
            real = input_ids.ne(self.c.pad_token_id).long()
            return real.cumsum(-1) * real + self.c.pad_token_id
        return torch.arange(input_ids.size(1), device=input_ids.device).expand_as(input_ids)

    def forward(self, input_ids, token_type_ids=None, position_ids=None):
        if position_ids is None:
            position_ids = self.position_ids(input_ids)
        x = self.tok(input_ids) + self.pos(position_ids)  # (B, T, C)
        if self.types is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.types(token_type_ids)
        return self.drop(self.norm(x))


class MLMHead(nn.Module):
    """Linear -> activation -> LayerNorm -> decoder to the vocabulary (+ bias)."""

    def __init__(self, c: BertConfig):
        super().__init__()
        self.transform = nn.Linear(c.d_model, c.d_model)
        self.activation = activation_of(c.activation)
        self.norm = nn.LayerNorm(c.d_model, eps=c.norm_eps)
        self.decoder = nn.Linear(c.d_model, c.vocab_size)

    def forward(self, x):
        return self.decoder(self.norm(self.activation(self.transform(x))))  # (B, T, V)


class Bert(Model):
    def __init__(self, config: BertConfig):
        super().__init__(config)
        c = config
        self.embeddings = Embeddings(c)
        self.blocks = nn.ModuleList(
            TransformerBlock(c.d_model, c.n_head, c.ffn_size, ffn_kind=c.activation, norm="layernorm",
                             norm_eps=c.norm_eps, prenorm=False, dropout=c.dropout, attn_dropout=c.attn_dropout,
                             backend=c.attn_backend)
            for _ in range(c.n_layer))
        self.pooler = nn.Linear(c.d_model, c.d_model) if c.pooler else None
        self.drop = nn.Dropout(c.dropout)
        self.mlm = MLMHead(c) if c.head in ("mlm", "pretraining") else None
        n_out = {"pretraining": 2, "sequence": c.n_labels, "token": c.n_labels, "qa": 2}.get(c.head)
        self.classifier = nn.Linear(c.d_model, n_out) if n_out else None
        self.apply(self._init_weights)
        if self.mlm is not None and c.tie_weights:
            self.mlm.decoder.weight = self.embeddings.tok.weight

    @staticmethod
    def _init_weights(module, std=0.02):
        """BERT's initialisation: Normal(0, 0.02) weights, zero biases, unit LayerNorms."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            nn.init.zeros_(module.weight[module.padding_idx])

    def encode(self, input_ids, attention_mask=None, token_type_ids=None):
        """input_ids (B, T) -> final hidden states (B, T, C). attention_mask: 1 real, 0 padding.

        Trailing columns that are padding in every row are cut off before the blocks run (no
        real token can see them) and come back as zeros; a batch with no padding left runs
        without a mask, which lets SDPA take its fastest kernel.
        """
        t = input_ids.size(1)
        if t > self.config.max_seq_len:
            raise ValueError(f"sequence of {t} tokens exceeds max_seq_len {self.config.max_seq_len}")
        mask = None
        if attention_mask is not None and torch.jit.is_tracing():  # an exported graph masks every column
            mask = padding_mask(attention_mask)
        elif attention_mask is not None:
            real_columns = attention_mask.bool().any(dim=0).nonzero()
            kept = int(real_columns.max()) + 1 if len(real_columns) else t
            input_ids, attention_mask = input_ids[:, :kept], attention_mask[:, :kept]
            token_type_ids = None if token_type_ids is None else token_type_ids[:, :kept]
            mask = None if attention_mask.bool().all() else padding_mask(attention_mask)  # (B, 1, 1, T)
        x = self.embeddings(input_ids, token_type_ids)
        for block in self.blocks:
            x = block(x, mask=mask)
        return x if x.size(1) == t else F.pad(x, (0, 0, 0, t - x.size(1)))

    def with_head(self, head: str, **fields) -> "Bert":
        """A new model with this encoder's weights (copied) and a freshly initialised `head`:
        e.g. all-MiniLM-L6-v2 -> `with_head("sequence", n_labels=2)` for fine-tuning. The old head's
        label names go with it unless `id2label` is given."""
        needs_pooler = head in ("sequence", "pretraining")
        fields = {"id2label": None, **fields}
        config = self.config.replace(head=head, pooler=self.config.pooler or needs_pooler, **fields)
        model = Bert(config).to(next(self.parameters()).device)
        encoder = {k: v for k, v in self.state_dict().items() if not k.startswith(("mlm.", "classifier."))}
        result = model.load_state_dict(encoder, strict=False)
        assert not result.unexpected_keys, result.unexpected_keys
        return model

    def classifier_for(self, names: list, pooling: str | None = None) -> "Bert":
        """A sequence classifier for the label `names` (saved as its config's id2label), carrying
        these weights and a fresh head that reads the [CLS] state (pooling="cls") or the mean of
        the real tokens (pooling="mean"); None keeps this model's setting. A classifier with as many
        labels and the same pooling keeps its head, under the new names."""
        c = self.config
        pooling = pooling or c.pooling
        id2label = {str(i): name for i, name in enumerate(names)}
        if c.head == "sequence" and c.n_labels == len(names) and c.pooling == pooling:
            self.config = c.replace(id2label=id2label)
            return self
        return self.with_head("sequence", n_labels=len(names), pooling=pooling, id2label=id2label)

    def pool(self, hidden, attention_mask=None):
        """The sentence summary activation(Linear(s)) -> (B, C), where s is the [CLS] state or,
        with pooling="mean", the mean of the real tokens' states."""
        if self.config.pooling == "cls":
            summary = hidden[:, 0]
        elif attention_mask is None:
            summary = hidden.mean(1)
        else:
            summary = mean_pool(hidden, attention_mask)
        return POOLER_ACTIVATIONS[self.config.pooler_activation](self.pooler(summary))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, next_sentence_label=None,
                start_positions=None, end_positions=None):
        """-> ModelOutput(logits, loss, hidden_states (B, T, C)).

        logits by head: mlm/pretraining (B, T, V) (pretraining adds aux_logits (B, 2) for
        next-sentence prediction); sequence (B, n_labels); token (B, T, n_labels);
        qa (B, T, 2) with start logits in [..., 0] and end logits in [..., 1].
        labels: token ids to predict (-100 ignored) for mlm, class ids for sequence/token.
        """
        hidden = self.encode(input_ids, attention_mask, token_type_ids)
        head = self.config.head
        out = ModelOutput(hidden_states=hidden)
        if head in ("mlm", "pretraining"):
            out.logits = self.mlm(hidden)
            losses = [_cross_entropy(out.logits, labels)]
            if head == "pretraining":
                out.aux_logits = self.classifier(self.pool(hidden, attention_mask))
                losses.append(_cross_entropy(out.aux_logits, next_sentence_label))
            losses = [loss for loss in losses if loss is not None]
            out.loss = sum(losses) if losses else None
        elif head == "sequence":
            out.logits = self.classifier(self.drop(self.pool(hidden, attention_mask)))
            if labels is not None and self.config.n_labels == 1:
                out.loss = F.mse_loss(out.logits.squeeze(-1), labels.float())
            else:
                out.loss = _cross_entropy(out.logits, labels)
        elif head == "token":
            out.logits = self.classifier(self.drop(hidden))
            out.loss = _cross_entropy(out.logits, labels)
        elif head == "qa":
            out.logits = self.classifier(hidden)
            if start_positions is not None and end_positions is not None:
                out.loss = (_cross_entropy(out.logits[..., 0], start_positions)
                            + _cross_entropy(out.logits[..., 1], end_positions)) / 2
        return out


def _cross_entropy(logits, labels):
    if labels is None:
        return None
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)


def _bert(n_layer, n_head, d_model, **fields):
    return BertConfig(n_layer=n_layer, n_head=n_head, d_model=d_model, **fields)


_ROBERTA = dict(vocab_size=50265, max_positions=514, type_vocab_size=1, pad_token_id=1, position_style="roberta",
                norm_eps=1e-5)
_DISTILBERT = dict(type_vocab_size=0, pooler=False, pooler_activation="relu")

PRESETS.update({
    "bert-tiny": _bert(2, 2, 128),
    "bert-mlm-tiny": _bert(2, 2, 32, vocab_size=64, max_positions=64, head="mlm", pooler=False),
    "bert-mini": _bert(4, 4, 256),
    "bert-small": _bert(4, 8, 512),
    "bert-base": _bert(12, 12, 768),
    "bert-large": _bert(24, 16, 1024),
    "minilm-l6": _bert(6, 12, 384),  # all-MiniLM-L6-v2's shape
    "minilm-l12": _bert(12, 12, 384),
    "roberta-base": _bert(12, 12, 768, **_ROBERTA),
    "roberta-large": _bert(24, 16, 1024, **_ROBERTA),
    "distilbert-base": _bert(6, 12, 768, **_DISTILBERT),
})

register(FamilySpec(BertConfig, Bert, kind=ENCODER, block_class=TransformerBlock, tiny_preset="bert-mlm-tiny",
                    example_batch=mlm_batch, processor=TextProcessor))
