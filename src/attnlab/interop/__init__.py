"""Hugging Face checkpoint interop: key maps, import and export, and the bundled MiniLM weights.

Every module of this package is imported here, so each interop/<family>.py registers its
Hugging Face spec without being named anywhere else (see registry.py). A module here must
therefore import without optional dependencies.
"""

import importlib
import pkgutil

from .hf import export_hf, import_hf, load_hf_state, load_minilm, minilm_path, read_hf_config, read_hf_weights
from .keymap import KeyMap, Rule
from .registry import HFModelType, HFSpec, hf_spec_for, register_hf

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["HFModelType", "HFSpec", "KeyMap", "Rule", "export_hf", "hf_spec_for", "import_hf", "load_hf_state",
           "load_minilm", "minilm_path", "read_hf_config", "read_hf_weights", "register_hf"]
