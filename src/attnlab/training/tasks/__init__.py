"""Tasks turn a run config into (model, tokenizer, batch source) for the trainer.

A run config (configs/*.yaml, plus key=value overrides) has the sections

    task:       the objective: lm, mlm, seq2seq, span_corruption, node_classification, contrastive, or image_,
                audio_ or video_classification (default: the one for the model's kind, models/base.py
                default_task: lm for a causal LM, mlm for an encoder, node_classification for a
                graph network, image_classification for an image classifier, ...)
    model:      preset: NAME plus overrides, or family: NAME plus fields, checked by the family's config
    tokenizer:  the task's tokenizer section, e.g. {kind: char}
    data:       the task's data section, e.g. {path: corpus.txt, val_fraction: 0.1}
    train:      the trainer's settings (TrainConfig)

`resolve_run` checks all of them before anything is built: an unknown section, or an unknown
key in the tokenizer, data or train section, is one error naming it and what is known.

The batch size has one home, `train.batch_size`, and every task's batch source reads it from
the resolved TrainConfig. When the run does not set it, the task's own default applies
(`Task.batch_size`: 32 pairs for seq2seq and span_corruption), else TrainConfig's (12).

Each objective is one module here declaring a `Task` (tasks/base.py); adding one is a module
and a line in TASKS.
"""

from pathlib import Path

import torch

from ...errors import UserError
from ...models.base import default_task, family_spec
from ..trainer import TrainConfig
from .base import Run, Task, cached_splits, model_config, model_family
from .contrastive import CONTRASTIVE
from .graph import NODE_CLASSIFICATION
from .lm import LM
from .media import MEDIA_TASKS
from .mlm import MLM
from .seq2seq import SEQ2SEQ, SPAN_CORRUPTION

TASKS = {t.name: t for t in (LM, MLM, SEQ2SEQ, SPAN_CORRUPTION, NODE_CLASSIFICATION, CONTRASTIVE, *MEDIA_TASKS)}
SECTIONS = ("task", "model", "tokenizer", "data", "train")

__all__ = ["SECTIONS", "TASKS", "Run", "Task", "cached_splits", "model_config", "resolve_run", "setup_task"]


def resolve_run(run: dict) -> Run:
    """A run config dict -> a `Run` with typed sections; user mistakes are one `UserError`."""
    unknown = sorted(set(run) - set(SECTIONS))
    if unknown:
        raise UserError(f"run config: unknown section(s) {', '.join(unknown)}; known sections are "
                        f"{', '.join(SECTIONS)}")
    model, tokenizer, data, train = (_mapping(run, section) for section in SECTIONS[1:])
    name = run.get("task") or default_task(family_spec(model_family(model)))
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    task = TASKS[name]
    if task.batch_size is not None:
        train = {"batch_size": task.batch_size, **train}
    train = {**(task.train_defaults or {}), **train}
    return Run(task, model, task.tokenizer.from_dict(tokenizer), task.data.from_dict(data),
               TrainConfig.from_dict(train))


def setup_task(run: Run, run_dir: Path, resume: bool):
    """-> (model, tokenizer, batch source) for `run`, in `run_dir` (resume: from its last/)."""
    torch.manual_seed(run.train.seed)  # same seed, same initial weights
    model, tokenizer, batches = run.task.setup(run, Path(run_dir), resume)
    family = model_family(run.model, run.task.family)
    if resume and model.config.family != family:
        raise UserError(f"{Path(run_dir) / 'last'} holds a {model.config.family} model, but the run trains a {family} "
                        "model; --resume continues only the run's own checkpoint")
    return model, tokenizer, batches


def _mapping(run: dict, section: str) -> dict:
    value = run.get(section)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"run config: the {section} section must be a mapping of key: value, got {value!r}")
    return value
