"""train: train a model from a run config (YAML/JSON) with key=value overrides; the task, and so
the kind of model, comes from the config (models/base.py default_task)."""

import json
import sys
from pathlib import Path

from ..errors import UserError
from ..models.base import family_spec
from ..training import Trainer, distributed
from ..training.trainer import Stopped
from ..training.tasks import resolve_run, setup_task
from .common import (claim_output, load_run_config, mark_output, output_dir, print_json, run_config_arguments,
                     run_overrides)

RUN_FILE = "run.json"
# What a resumed run keeps: overrides may change only the train section.
FIXED_ON_RESUME = ("task", "model", "tokenizer", "data")


def register(sub):
    p = sub.add_parser("train", help="train a model from a run config (YAML/JSON) with key=value overrides")
    run_config_arguments(p)
    p.add_argument("--out", default="runs/train", help="run directory (default: runs/train); a non-empty one that "
                   "is not an earlier train's is refused")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--max-minutes", type=float, help="wall-clock budget (sets train.max_minutes): the schedule "
                   "decays to fit it, and the run ends with an evaluation and a checkpoint")
    p.set_defaults(run=train)


def train(args):
    run_dir = output_dir(args.out)
    overrides = run_overrides(args)
    if args.max_minutes is not None:
        overrides.append(f"train.max_minutes={args.max_minutes}")
    if args.resume:
        run = resumed_run(run_dir, overrides)
    else:
        if (run_dir / "last").exists():
            raise UserError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
        claim_output(run_dir, "train")
        run = load_run_config(args.config, overrides)
    resolved = resolve_run(run)
    parallel = distributed.from_env(resolved.train.distributed, resolved.train.device)  # one process unless torchrun
    try:
        with parallel.main_first():  # rank 0 writes the data cache, the others then read it
            if parallel.is_main:
                mark_output(run_dir, "train")
            model, tokenizer, batches = setup_task(resolved, run_dir, args.resume)
        scores = resolved.task.val_scores
        trainer = Trainer(model, resolved.train, batches, run_dir, tokenizer, parallel=parallel,
                          block_class=family_spec(model).sharding_unit,
                          val_scores=scores and (lambda m: scores(batches, m)))
        if args.resume:
            trainer.resume(run_dir / "last")
        if parallel.is_main:
            (run_dir / RUN_FILE).write_text(json.dumps(run, indent=2))
            print(f"{model.config.family} model, {model.num_parameters():,} parameters, training on {trainer.device}"
                  f"{f' x {parallel.world_size} processes' if parallel.world_size > 1 else ''}; run directory {run_dir}",
                  file=sys.stderr)
        try:
            last = trainer.train()
        except Stopped as stop:
            raise UserError(f"{stop}; saved {run_dir / 'last'}, continue with --resume") from None
        except KeyboardInterrupt:
            raise UserError(interrupted(run_dir, trainer.step)) from None
    finally:
        parallel.close()
    if parallel.is_main:
        print_json({"run_dir": str(run_dir), "best_val_loss": trainer.best_val, **last})


def resumed_run(run_dir: Path, overrides: list) -> dict:
    """The run in `run_dir` with `overrides` applied; one that would change what the checkpoint
    was trained as (model, tokenizer, data, task) is refused."""
    if not (run_dir / RUN_FILE).exists():
        raise UserError(f"{run_dir} has no run to resume ({RUN_FILE} is missing)")
    saved = load_run_config(run_dir / RUN_FILE)
    run = load_run_config(run_dir / RUN_FILE, overrides)
    changed = [section for section in FIXED_ON_RESUME if run.get(section) != saved.get(section)]
    if changed:
        raise UserError(f"--resume continues the run as it was trained; only train.* settings may change, but the "
                        f"overrides change its {' and '.join(changed)} (start a new run with another --out instead)")
    return run


def interrupted(run_dir: Path, step: int) -> str:
    if (run_dir / "last").exists():
        return f"interrupted at step {step}; the last checkpoint in {run_dir / 'last'} is intact, continue with --resume"
    return (f"interrupted at step {step}, before the first checkpoint: nothing to resume; run the same command "
            "again to start over")
