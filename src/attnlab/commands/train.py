"""train: train a model from a run config (YAML/JSON) with key=value overrides; the task, and so
the kind of model, comes from the config (models/base.py DEFAULT_TASKS)."""

import json
import sys

from ..errors import UserError
from ..models.base import family_spec
from ..training import Trainer, distributed
from ..training.tasks import resolve_run, setup_task
from .common import load_run_config, output_dir, print_json

RUN_FILE = "run.json"


def register(sub):
    p = sub.add_parser("train", help="train a model from a run config (YAML/JSON) with key=value overrides")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="e.g. train.lr=3e-4 model.n_layer=2")
    p.add_argument("--config", help="YAML or JSON run config (sections: task, model, tokenizer, data, train)")
    p.add_argument("--data", help="text file or folder (sets data.path); for task seq2seq the training pairs file")
    p.add_argument("--preset", help="model preset (sets model.preset)")
    p.add_argument("--out", default="runs/train", help="run directory (default: runs/train)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.set_defaults(run=train)


def train(args):
    run_dir = output_dir(args.out)
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.path={args.data}")
    if args.preset:
        overrides.append(f"model.preset={args.preset}")
    if args.resume:
        if not (run_dir / RUN_FILE).exists():
            raise UserError(f"{run_dir} has no run to resume ({RUN_FILE} is missing)")
        run = load_run_config(run_dir / RUN_FILE, overrides)
    else:
        if (run_dir / "last").exists():
            raise UserError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
        run = load_run_config(args.config, overrides)
    resolved = resolve_run(run)
    parallel = distributed.from_env(resolved.train.distributed, resolved.train.device)  # one process unless torchrun
    try:
        with parallel.main_first():  # rank 0 writes the data cache, the others then read it
            model, tokenizer, batches = setup_task(resolved, run_dir, args.resume)
        trainer = Trainer(model, resolved.train, batches, run_dir, tokenizer, parallel=parallel,
                          block_class=family_spec(model).sharding_unit)
        if args.resume:
            trainer.resume(run_dir / "last")
        if parallel.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / RUN_FILE).write_text(json.dumps(run, indent=2))
            print(f"{model.config.family} model, {model.num_parameters():,} parameters, training on {trainer.device}"
                  f"{f' x {parallel.world_size} processes' if parallel.world_size > 1 else ''}; run directory {run_dir}",
                  file=sys.stderr)
        try:
            last = trainer.train()
        except KeyboardInterrupt:
            raise UserError(f"interrupted at step {trainer.step}; the last checkpoint in {run_dir / 'last'} is intact, "
                            "continue with --resume") from None
    finally:
        parallel.close()
    if parallel.is_main:
        print_json({"run_dir": str(run_dir), "best_val_loss": trainer.best_val, **last})
