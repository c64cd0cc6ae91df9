"""Longformer (Beltagy et al. 2020): a BERT-shaped encoder with sliding-window + global attention.

Every token attends to `attention_window / 2` tokens on each side (dilated per head if asked);
tokens marked in `global_attention_mask` attend to every token and every token attends to them,
through their own query/key/value projections. Memory grows as n * attention_window.
Positions are counted as RoBERTa does: from pad_token_id + 1 over the real tokens.
"""

import dataclasses

import torch

from ..layers import TransformerBlock
from ..layers.sparse_attention import SlidingWindowAttention
from ..processors import TextProcessor
from .base import ENCODER, PRESETS, FamilySpec, mlm_batch, register
from .long_encoder import LongEncoder, LongEncoderConfig


@dataclasses.dataclass
class LongformerConfig(LongEncoderConfig):
    family = "longformer"
    attention_window: int = 512  # keys seen around a token, both sides together (even)
    dilation: int = 1  # or one value per head, e.g. [1, 1, 2, 2]

    @property
    def max_seq_len(self) -> int:
        return self.max_positions - self.pad_token_id - 1  # positions count from pad_token_id + 1

    def validate(self):
        super().validate()
        self.require_positive("attention_window")
        if self.attention_window % 2:
            raise self.invalid(f"attention_window must be even (it is split over both sides), "
                               f"got {self.attention_window}")
        dilations = [self.dilation] if isinstance(self.dilation, int) else list(self.dilation)
        if not dilations or any(not isinstance(d, int) or d <= 0 for d in dilations) or \
                len(dilations) not in (1, self.n_head):
            raise self.invalid(f"dilation must be a positive integer or one per head ({self.n_head}), "
                               f"got {self.dilation!r}")


class Longformer(LongEncoder):
    @staticmethod
    def make_attention(c, layer):
        return SlidingWindowAttention(c.d_model, c.n_head, c.attention_window // 2, dilation=c.dilation,
                                      global_projections=True, dropout=c.attn_dropout)

    def position_ids(self, input_ids):
        real = input_ids.ne(self.config.pad_token_id).long()
        return real.cumsum(-1) * real + self.config.pad_token_id

    def attention_kwargs(self, key_mask, global_attention_mask):
        global_mask = None if global_attention_mask is None else global_attention_mask.bool() & key_mask
        return {"key_mask": key_mask, "global_mask": global_mask}


PRESETS.update({
    "longformer-tiny": LongformerConfig(vocab_size=256, max_positions=4098, n_layer=2, n_head=4, d_model=128,
                                        attention_window=64, pad_token_id=0),
    "longformer-base": LongformerConfig(),
    "longformer-mlm-tiny": LongformerConfig(vocab_size=64, max_positions=130, n_layer=2, n_head=2, d_model=32,
                                            attention_window=8, pad_token_id=0, head="mlm"),
})


def _example_batch(config, generator):
    """A masked-LM batch in which the first token attends globally (reaching the global projections)."""
    batch = mlm_batch(config, generator, length=40)
    batch["global_attention_mask"] = torch.zeros_like(batch["input_ids"])
    batch["global_attention_mask"][:, 0] = 1
    return batch


register(FamilySpec(LongformerConfig, Longformer, kind=ENCODER, block_class=TransformerBlock,
                    tiny_preset="longformer-mlm-tiny", example_batch=_example_batch, processor=TextProcessor,
                    no_attention_weights="sliding-window attention computes a band of scores per query and never "
                    "forms the full attention matrix"))
