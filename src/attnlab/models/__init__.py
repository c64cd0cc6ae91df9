"""Model families, one small file each, composed from layers; a registry name -> (config, model)."""

from . import bert, bigbird, encoder_decoder, gpt, longformer, t5  # noqa: F401  (register the families)
from .base import FAMILIES, PRESETS, Model, ModelOutput, build_model, config_from_dict, preset
from .bert import Bert, BertConfig
from .bigbird import BigBird, BigBirdConfig
from .encoder_decoder import EncoderDecoder, TransformerConfig
from .gpt import GPT, GPTConfig
from .longformer import Longformer, LongformerConfig
from .seq2seq import Seq2SeqModel
from .t5 import T5, T5Config

__all__ = ["Bert", "BertConfig", "BigBird", "BigBirdConfig", "EncoderDecoder", "FAMILIES", "GPT", "GPTConfig",
           "Longformer", "LongformerConfig", "Model", "ModelOutput", "PRESETS", "Seq2SeqModel", "T5", "T5Config",
           "TransformerConfig", "build_model", "config_from_dict", "preset"]
