"""Processors: what turns raw input into model input, saved in the checkpoint directory.

A processor class answers `exists(directory)` and `load(directory)`; what `load` returns has
`save(directory)`. Each family's spec names its processor (models/base.py `FamilySpec.processor`),
so `load_checkpoint` returns the right one for any family: one text tokenizer for causal LMs and
encoders, a source and a target tokenizer for encoder-decoders. An image, audio or video
processor takes the same place for its families.
"""

from .graph import GraphProcessor
from .seq2seq import Seq2SeqTokenizers
from .text import TextProcessor

__all__ = ["GraphProcessor", "Seq2SeqTokenizers", "TextProcessor"]
