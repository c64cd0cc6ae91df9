"""Training: the trainer loop, optimiser groups and schedules, tasks that set up a run."""

from .optim import lr_at, make_optimizer, param_groups
from .trainer import TrainConfig, Trainer

__all__ = ["TrainConfig", "Trainer", "lr_at", "make_optimizer", "param_groups"]
