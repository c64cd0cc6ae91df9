"""Model families, one small file each, composed from layers; a registry name -> (config, model)."""

from . import bert, encoder_decoder, gpt, t5  # noqa: F401  (register the families and their presets)
from .base import FAMILIES, PRESETS, Model, ModelOutput, build_model, config_from_dict, preset
from .bert import Bert, BertConfig
from .encoder_decoder import EncoderDecoder, TransformerConfig
from .gpt import GPT, GPTConfig
from .seq2seq import Seq2SeqModel
from .t5 import T5, T5Config

__all__ = ["Bert", "BertConfig", "EncoderDecoder", "FAMILIES", "GPT", "GPTConfig", "Model", "ModelOutput", "PRESETS",
           "Seq2SeqModel", "T5", "T5Config", "TransformerConfig", "build_model", "config_from_dict", "preset"]
