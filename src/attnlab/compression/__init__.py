"""Making models smaller and faster: LoRA, quantisation, pruning, distillation.

Everything here acts on the shared layers (the projections that every attention layer and
`FeedForward` declare, see targets.py), so it reaches every family built from them.
"""

from .distill import Distiller, distillation_loss, make_student
from .lora import inject_lora, load_lora, merge_lora, save_lora, unmerge_lora
from .prune import iterative_prune, keep_pruned, prune_magnitude, prune_structured, sparsity_report
from .quantize import convert_qat, prepare_qat, quantize_model, torch_dynamic_quantize

__all__ = ["Distiller", "convert_qat", "distillation_loss", "inject_lora", "iterative_prune", "keep_pruned",
           "load_lora", "make_student", "merge_lora", "prepare_qat", "prune_magnitude", "prune_structured",
           "quantize_model", "save_lora", "sparsity_report", "torch_dynamic_quantize", "unmerge_lora"]
