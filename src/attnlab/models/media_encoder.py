"""What the classifiers of images, audio and video share (ViT, AST, ViViT): the config of a
pre-LN encoder of n_layer blocks over patch tokens, with a classification head over n_labels."""

import dataclasses
from typing import ClassVar

from ..config import ModelConfig
from ..layers import FFN_KINDS
from ..layers.attention import BACKENDS


@dataclasses.dataclass
class MediaEncoderConfig(ModelConfig):
    heads: ClassVar[tuple] = ("classifier", "none")  # none: the bare encoder
    n_layer: int = 12
    n_head: int = 12
    d_model: int = 768
    ffn_hidden: int = None  # None: 4 * d_model
    activation: str = "gelu"
    norm_eps: float = 1e-12
    dropout: float = 0.0
    attn_dropout: float = 0.0
    head: str = "classifier"
    n_labels: int = 2
    id2label: dict = None  # str(class index) -> label name; None: LABEL_0, LABEL_1, ...
    attn_backend: str = "sdpa"

    def validate(self):
        self.require_positive("n_layer", "n_head", "d_model", "n_labels")
        self.require_divisible("d_model", "n_head")
        self.require_index_names("id2label", self.n_labels)
        if self.ffn_hidden is not None:
            self.require_positive("ffn_hidden")
        self.require_fraction("dropout", "attn_dropout")
        self.require_choice("activation", tuple(k for k, (_, gated) in FFN_KINDS.items() if not gated))
        self.require_choice("head", self.heads)
        self.require_choice("attn_backend", BACKENDS)

    @property
    def ffn_size(self) -> int:
        return self.ffn_hidden or 4 * self.d_model
