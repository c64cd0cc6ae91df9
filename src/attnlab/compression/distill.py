"""Knowledge distillation (Hinton et al. 2015): a smaller student learns from a teacher.

    loss = alpha * CE(student, labels)                                   (the student's own loss)
         + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))
         + hidden_weight * mean over mapped layers of MSE(student hidden, teacher hidden)

The T^2 keeps the soft term's gradients on the same scale as the hard term's. For identical
teacher and student the soft and hidden terms are exactly zero.
"""

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..models.base import build_model, family_spec


@dataclasses.dataclass
class DistillLoss:
    total: torch.Tensor
    hard: torch.Tensor
    soft: torch.Tensor
    hidden: torch.Tensor


def distillation_loss(student_logits, teacher_logits, hard_loss=None, temperature=2.0, alpha=0.5,
                      student_hidden=(), teacher_hidden=(), hidden_weight=0.0) -> DistillLoss:
    """Logits (..., C); `hard_loss` is the student's loss on the labels (None: no labels)."""
    t = temperature
    student_log = F.log_softmax(student_logits.reshape(-1, student_logits.size(-1)).float() / t, dim=-1)
    teacher_log = F.log_softmax(teacher_logits.reshape(-1, teacher_logits.size(-1)).float() / t, dim=-1)
    soft = F.kl_div(student_log, teacher_log, log_target=True, reduction="batchmean") * t * t
    zero = soft.new_zeros(())
    hidden = (sum(F.mse_loss(s, h) for s, h in zip(student_hidden, teacher_hidden)) / max(len(student_hidden), 1)
              if student_hidden else zero)
    hard = zero if hard_loss is None else hard_loss
    total = (alpha * hard if hard_loss is not None else zero) + (1 - alpha) * soft + hidden_weight * hidden
    return DistillLoss(total, hard, soft, hidden)


def block_list(model: nn.Module) -> tuple:
    """(attribute path, ModuleList) of the model's blocks: the repeated layer its family's spec
    names (TransformerBlock, Transformer-XL's RelativeBlock, the Reformer's ReversibleBlock)."""
    block_class = family_spec(model).block_class
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and module and all(isinstance(b, block_class) for b in module):
            return name, module
    raise UserError(f"{type(model).__name__} has no list of {block_class.__name__}s to distil")


def default_layer_map(n_teacher: int, n_student: int) -> list:
    """Evenly spaced teacher layers, keeping the first and the last: 6 -> 3 gives [0, 2, 5]."""
    if n_student == 1:
        return [n_teacher - 1]
    return [round(i * (n_teacher - 1) / (n_student - 1)) for i in range(n_student)]


def make_student(teacher: nn.Module, n_layer: int, init="teacher", layer_map=None) -> nn.Module:
    """A copy of the teacher's architecture with `n_layer` blocks shaped like
    the teacher's layers `layer_map` (default: evenly spaced), initialised from them (and all the
    teacher's non-block weights) or fresh."""
    prefix, blocks = block_list(teacher)
    if not 0 < n_layer <= len(blocks):
        raise UserError(f"the student needs between 1 and {len(blocks)} layers, got {n_layer}")
    if init not in ("teacher", "fresh"):
        raise UserError(f"student init must be 'teacher' or 'fresh', got {init!r}")
    layer_map = layer_map or default_layer_map(len(blocks), n_layer)
    student = build_model(teacher.config.with_depth(layer_map))
    if init == "teacher":
        rename = {f"{prefix}.{t}.": f"{prefix}.{s}." for s, t in enumerate(layer_map)}
        weights = {}
        for key, tensor in teacher.state_dict().items():
            if not key.startswith(prefix + "."):
                weights[key] = tensor
                continue
            old = ".".join(key.split(".")[:prefix.count(".") + 2]) + "."
            if old in rename:
                weights[rename[old] + key[len(old):]] = tensor
        student.load_state_dict(weights)
    student.distilled_from = {"layers": layer_map, "init": init}
    return student


class Distiller:
    """loss_fn(student, batch) -> DistillLoss for a training loop; captures hidden states of
    student block i and teacher block layer_map[i] with forward hooks."""

    def __init__(self, teacher, student, temperature=2.0, alpha=0.5, hidden_weight=0.0, layer_map=None):
        self.teacher = teacher.eval().requires_grad_(False)
        self.temperature, self.alpha, self.hidden_weight = temperature, alpha, hidden_weight
        _, teacher_blocks = block_list(teacher)
        _, student_blocks = block_list(student)
        layer_map = layer_map or default_layer_map(len(teacher_blocks), len(student_blocks))
        self.captured = {"student": [], "teacher": []}
        if hidden_weight:
            for block in student_blocks:
                block.register_forward_hook(self._capture("student"))
            for index in layer_map:
                teacher_blocks[index].register_forward_hook(self._capture("teacher"))

    def _capture(self, side):
        def hook(module, inputs, output):
            self.captured[side].append(output[0] if isinstance(output, tuple) else output)
        return hook

    def __call__(self, student, batch) -> DistillLoss:
        self.captured = {"student": [], "teacher": []}
        with torch.no_grad():
            teacher_out = self.teacher(**batch)
        student_out = student(**batch)
        return distillation_loss(student_out.logits, teacher_out.logits, student_out.loss, self.temperature,
                                 self.alpha, self.captured["student"], self.captured["teacher"], self.hidden_weight)
