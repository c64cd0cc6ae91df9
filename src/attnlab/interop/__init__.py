"""Import and export of Hugging Face checkpoints (config.json + safetensors) by key maps."""

from . import marian, t5  # noqa: F401  (register the families)
from .keymap import FAMILIES, Family, Key, export_weights, import_weights, load_hf, read_hf_checkpoint, save_hf

__all__ = ["FAMILIES", "Family", "Key", "export_weights", "import_weights", "load_hf", "read_hf_checkpoint", "save_hf"]
