"""Model families, one small file each, composed from layers, each registering its FamilySpec.

Every module of this package is imported here, so a new family's file registers itself with no
line to add anywhere; the names below are the families' classes, for convenience.
"""

import importlib
import pkgutil

from .base import FAMILIES, PRESETS, Model, ModelOutput, build_model, config_from_dict, preset
from .bert import Bert, BertConfig
from .bigbird import BigBird, BigBirdConfig
from .encoder_decoder import EncoderDecoder, TransformerConfig
from .gpt import GPT, GPTConfig
from .longformer import Longformer, LongformerConfig
from .reformer import Reformer, ReformerConfig
from .seq2seq import Seq2SeqModel
from .t5 import T5, T5Config
from .transformer_xl import TransformerXL, TransformerXLConfig

__all__ = ["Bert", "BertConfig", "BigBird", "BigBirdConfig", "EncoderDecoder", "FAMILIES", "GPT", "GPTConfig",
           "Longformer", "LongformerConfig", "Model", "ModelOutput", "PRESETS", "Reformer", "ReformerConfig",
           "Seq2SeqModel", "T5", "T5Config", "TransformerConfig", "TransformerXL", "TransformerXLConfig",
           "build_model", "config_from_dict", "preset"]

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
