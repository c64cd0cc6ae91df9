"""Model families, one small file each, composed from layers; a registry name -> (config, model)."""

from . import gpt  # noqa: F401  (registers the family and its presets)
from .base import FAMILIES, PRESETS, Model, ModelOutput, build_model, config_from_dict, preset
from .gpt import GPT, GPTConfig

__all__ = ["FAMILIES", "GPT", "GPTConfig", "Model", "ModelOutput", "PRESETS", "build_model", "config_from_dict",
           "preset"]
