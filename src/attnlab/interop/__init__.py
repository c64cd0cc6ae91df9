"""Hugging Face checkpoint interop: key maps, import and export, and the bundled MiniLM weights."""

from .hf import export_hf, import_hf, load_hf_state, load_minilm, minilm_path, read_hf_config, read_hf_weights
from .keymap import KeyMap, Rule

__all__ = ["KeyMap", "Rule", "export_hf", "import_hf", "load_hf_state", "load_minilm", "minilm_path", "read_hf_config",
           "read_hf_weights"]
