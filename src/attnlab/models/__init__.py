"""Model families, one small file each, composed from layers; a registry name -> (config, model)."""

from . import bert, bigbird, encoder_decoder, gpt, longformer, reformer, t5, transformer_xl  # noqa: F401  (register)
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
