"""Model families, one small file each, composed from layers; a registry name -> (config, model)."""

from . import gpt, reformer, transformer_xl  # noqa: F401  (registers the families and their presets)
from .base import FAMILIES, PRESETS, Model, ModelOutput, build_model, config_from_dict, preset
from .gpt import GPT, GPTConfig
from .reformer import Reformer, ReformerConfig
from .transformer_xl import TransformerXL, TransformerXLConfig

__all__ = ["FAMILIES", "GPT", "GPTConfig", "Model", "ModelOutput", "PRESETS", "Reformer", "ReformerConfig",
           "TransformerXL", "TransformerXLConfig", "build_model", "config_from_dict", "preset"]
