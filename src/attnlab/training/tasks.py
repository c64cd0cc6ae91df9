"""Tasks turn a run config into (model, tokenizer, batch source) for the trainer.

A run config is a dict with the sections `task`, `model`, `tokenizer`, `data` and `train`
(see configs/*.yaml). Each family's training objective registers a task here with `@task`;
`attnlab train` looks it up by the `task` name.
"""

from pathlib import Path

import torch

from ..checkpoint import load_checkpoint
from ..data.corpus import LMBlocks, encode_text, open_memmap, read_text, split_ids, write_memmap
from ..errors import UserError
from ..models.base import build_model, config_from_dict, preset
from ..tokenizers import train_tokenizer
from .trainer import TrainConfig

TASKS = {}


def task(name):
    def wrap(fn):
        TASKS[name] = fn
        return fn
    return wrap


def setup_task(run: dict, run_dir: Path, resume: bool):
    name = run.get("task", "lm")
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    torch.manual_seed(TrainConfig.from_dict(run.get("train", {})).seed)  # same seed, same initial weights
    return TASKS[name](run, Path(run_dir), resume)


def model_config(section: dict, **fixed):
    """The `model` section -> a config: `preset: NAME` plus overrides, or `family: NAME` plus fields."""
    section = {**section, **fixed}
    if "preset" in section:
        name = section.pop("preset")
        return preset(name, **section)
    return config_from_dict({"family": "gpt", **section})


@task("lm")
def causal_lm(run: dict, run_dir: Path, resume: bool):
    """Causal language modelling on a text file or folder; ids cached as memmaps in the run."""
    data, train = run.get("data", {}), run.get("train", {})
    if resume:
        model, tokenizer = load_checkpoint(run_dir / "last")
    else:
        if "path" not in data:
            raise UserError("data.path is missing: point it at a text file or folder")
        tok = run.get("tokenizer", {})
        tokenizer = train_tokenizer(tok.get("kind", "char"), read_text(data["path"]), tok.get("vocab_size"))
        model = build_model(model_config(run.get("model", {}), vocab_size=tokenizer.vocab_size))
    splits = cached_splits(run_dir / "data", data, tokenizer, float(data.get("val_fraction", 0.1)))
    batches = LMBlocks(splits, model.config.block_size, int(train.get("batch_size", 12)))
    return model, tokenizer, batches


def cached_splits(cache_dir: Path, data: dict, tokenizer, val_fraction: float, encode=encode_text) -> dict:
    paths = {split: cache_dir / f"{split}.bin" for split in ("train", "val")}
    if not all(p.exists() for p in paths.values()):
        if "path" not in data:
            raise UserError("data.path is missing: point it at a text file or folder")
        ids = encode(tokenizer, read_text(data["path"]))
        if not 0 < val_fraction < 1:
            raise UserError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        for split, part in zip(paths, split_ids(ids, val_fraction)):
            write_memmap(part, paths[split], tokenizer.vocab_size)
    return {split: open_memmap(path, tokenizer.vocab_size) for split, path in paths.items()}


from . import encoder_tasks, seq2seq_task  # noqa: E402,F401  (register the encoder and seq2seq objectives)
