"""Model families, one small file each, composed from layers; a registry name -> (config, model)."""

from . import bigbird, gpt, longformer  # noqa: F401  (register the families and their presets)
from .base import FAMILIES, PRESETS, Model, ModelOutput, build_model, config_from_dict, preset
from .bigbird import BigBird, BigBirdConfig
from .gpt import GPT, GPTConfig
from .longformer import Longformer, LongformerConfig

__all__ = ["BigBird", "BigBirdConfig", "FAMILIES", "GPT", "GPTConfig", "Longformer", "LongformerConfig", "Model",
           "ModelOutput", "PRESETS", "build_model", "config_from_dict", "preset"]
