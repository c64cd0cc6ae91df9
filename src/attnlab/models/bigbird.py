"""BigBird (Zaheer et al. 2020): a BERT-shaped encoder with block-sparse attention.

The sequence is cut into blocks of `sparse_block_size` tokens; the first and last blocks attend
to and are attended by everything, every other block attends to its 3 neighbouring blocks, the 2 global
blocks and `n_random_blocks` random blocks drawn from a generator seeded with `seed + layer`, so
the model is deterministic. Inputs are padded to whole blocks. Sequences of at most
(5 + 2 r) blocks are too short for the pattern and use full attention, as the reference does.
"""

import dataclasses

from ..layers import TransformerBlock
from ..layers.attention import MultiHeadAttention
from ..layers.sparse_attention import BigBirdAttention
from ..processors import TextProcessor
from .base import ENCODER, PRESETS, FamilySpec, mlm_batch, register
from .long_encoder import LongEncoder, LongEncoderConfig


@dataclasses.dataclass
class BigBirdConfig(LongEncoderConfig):
    family = "bigbird"
    aliases = {"block_size": "sparse_block_size"}
    vocab_size: int = 50358
    max_positions: int = 4096
    type_vocab_size: int = 2
    activation: str = "gelu_tanh"
    norm_eps: float = 1e-12
    pad_token_id: int = 0
    sparse_block_size: int = 64
    n_random_blocks: int = 3
    seed: int = 0

    @property
    def max_seq_len(self) -> int:
        return self.max_positions

    def validate(self):
        super().validate()
        self.require_positive("sparse_block_size")
        if not isinstance(self.n_random_blocks, int) or self.n_random_blocks < 0:
            raise self.invalid(f"n_random_blocks must be an integer >= 0, got {self.n_random_blocks!r}")


class BlockSparseOrFull(BigBirdAttention):
    """Block-sparse attention, or full attention for sequences too short for the pattern."""

    def forward(self, x, **kwargs):
        if x.size(1) > (5 + 2 * self.n_random) * self.block_size:
            return super().forward(x, **kwargs)
        return MultiHeadAttention.forward(self, x, **kwargs)


class BigBird(LongEncoder):
    classifier_activation = "gelu_tanh"
    @staticmethod
    def make_attention(c, layer):
        return BlockSparseOrFull(c.d_model, c.n_head, c.sparse_block_size, c.n_random_blocks, seed=c.seed + layer,
                                 dropout=c.attn_dropout)

    def position_ids(self, input_ids):
        return self.embeddings.pos.weight.new_ones(input_ids.shape).long().cumsum(-1) - 1

    def pad_multiple(self, t):
        sparse = t > (5 + 2 * self.config.n_random_blocks) * self.config.sparse_block_size
        return self.config.sparse_block_size if sparse else 1


PRESETS.update({
    "bigbird-tiny": BigBirdConfig(vocab_size=256, max_positions=4096, n_layer=2, n_head=4, d_model=128,
                                  sparse_block_size=32, n_random_blocks=2),
    "bigbird-base": BigBirdConfig(),
    "bigbird-mlm-tiny": BigBirdConfig(vocab_size=64, max_positions=256, n_layer=2, n_head=2, d_model=32,
                                      sparse_block_size=8, n_random_blocks=1, head="mlm"),
})


def _example_batch(config, generator):
    """A masked-LM batch long enough for the block-sparse pattern (more than 5 + 2 r blocks)."""
    return mlm_batch(config, generator, length=(6 + 2 * config.n_random_blocks) * config.sparse_block_size)


register(FamilySpec(BigBirdConfig, BigBird, kind=ENCODER, block_class=TransformerBlock, tiny_preset="bigbird-mlm-tiny",
                    example_batch=_example_batch, processor=TextProcessor,
                    no_attention_weights="block-sparse attention computes window, global and random blocks only "
                    "and never forms the full attention matrix"))
