"""Processors: what turns raw input into model input, saved in the checkpoint directory.

A processor class answers `exists(directory)`, `load(directory)` and `example(config)` (one for a
model of that config, for tests); what `load` returns has `save(directory)`. Each family's spec
names its processor (models/base.py `FamilySpec.processor`), so `load_checkpoint` returns the
right one for any family: one text tokenizer for causal LMs and encoders, a source and a target
tokenizer for encoder-decoders, and for a classifier of images, audio or video a MediaProcessor
(media.py: read and decode files of its modality, make model inputs, augment).
"""

import importlib
import pkgutil

from .graph import GraphProcessor
from .image import ImageProcessor
from .media import MEDIA_PROCESSORS, MediaProcessor
from .seq2seq import Seq2SeqTokenizers
from .text import TextProcessor

__all__ = ["MEDIA_PROCESSORS", "GraphProcessor", "ImageProcessor", "MediaProcessor", "Seq2SeqTokenizers",
           "TextProcessor"]

for _module in pkgutil.iter_modules(__path__):  # each modality's processor registers itself by being defined
    importlib.import_module(f"{__name__}.{_module.name}")
