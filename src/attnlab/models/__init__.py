"""Model families, one small file each, composed from layers; a registry name -> (config, model)."""

from . import bert, gpt  # noqa: F401  (register the families and their presets)
from .base import FAMILIES, PRESETS, Model, ModelOutput, build_model, config_from_dict, preset
from .bert import Bert, BertConfig
from .gpt import GPT, GPTConfig

__all__ = ["Bert", "BertConfig", "FAMILIES", "GPT", "GPTConfig", "Model", "ModelOutput", "PRESETS", "build_model",
           "config_from_dict", "preset"]
