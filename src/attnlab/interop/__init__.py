"""Hugging Face checkpoint interop: key maps, import and export, and the bundled MiniLM weights.

Two key-map mechanisms still live side by side (keymap.py for GPT-2 and the BERT family,
keymap_seq2seq.py for T5 and Marian); they are to become one.
"""

from . import marian, t5  # noqa: F401  (register the seq2seq families)
from .hf import export_hf, import_hf, load_minilm, minilm_path, read_hf_config, read_hf_weights
from .keymap import KeyMap, Rule
from .keymap_seq2seq import load_hf, save_hf

__all__ = ["KeyMap", "Rule", "export_hf", "import_hf", "load_hf", "load_minilm", "minilm_path", "read_hf_config",
           "read_hf_weights", "save_hf"]
