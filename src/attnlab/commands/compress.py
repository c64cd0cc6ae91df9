"""compress: run a compression pipeline (distil, prune, quantise) on a fine-tuned classifier and
write a report."""

import copy
import json

import torch

from ..checkpoint import save_checkpoint
from ..compression.pipeline import parse_pipeline, run_stage
from ..compression.report import disk_bytes, interleaved_latency, weight_count, write_report
from ..data.classification import LabelSet
from ..progress import say
from ..training.finetune import evaluate
from .classify import CLASSIFY_FILE, load_classifier
from .common import FORCE_HELP, claim_output, fresh_output
from .finetune import data_options, finetune_config, task_data, train_options


def register(sub):
    p = sub.add_parser("compress", help="run a compression pipeline on a fine-tuned classifier and write a report")
    p.add_argument("checkpoint", help="fine-tuned classifier (from attnlab finetune)")
    p.add_argument("--pipeline", default="distill:3,prune:0.4,quantize:dynamic_int8",
                   help="comma list of distill:LAYERS, prune:FRACTION, quantize:SCHEME")
    p.add_argument("--train", required=True, help="training file (for distillation and fine-tuning after pruning)")
    p.add_argument("--val", required=True, help="evaluation file")
    p.add_argument("--out", required=True, help="output directory: model/, report.md, report.png (an earlier "
                   "compress's is replaced once the new one is complete; any other non-empty directory is refused)")
    p.add_argument("--force", action="store_true", help=FORCE_HELP)
    data_options(p)
    train_options(p)
    p.add_argument("--repeats", type=int, default=20, help="latency repeats")
    p.set_defaults(run=compress)


def compress(args):
    claim_output(args.out, "compress", args.force)  # refuse before the long work, and again before writing
    stages = parse_pipeline(args.pipeline)
    config = finetune_config(args)
    model, tokenizer, names, _ = load_classifier("compress", args.checkpoint)
    _, train, val = task_data(args, tokenizer, LabelSet(names), val_required=True)
    log = say
    torch.manual_seed(config.seed)
    probe = val.texts[:max(32, args.repeats)]
    models, accuracy, details, done = {"start": model}, {"start": evaluate(model, val, names)["accuracy"]}, {}, []
    for stage in stages:
        log(f"stage {stage[0]}:{stage[1]}")
        current = model if stage[0] == "distill" else copy.deepcopy(model)  # pruning and quantising work in place
        model, details[f"{stage[0]}:{stage[1]}"] = run_stage(current, stage, train, val, names, config, log=log)
        done.append(f"{stage[0]}:{stage[1]}")
        models[" -> ".join(done)] = model
        accuracy[" -> ".join(done)] = evaluate(model, val, names)["accuracy"]
    latency = interleaved_latency(models, tokenizer, probe, config.max_length, args.repeats, max(2, args.repeats // 4))
    rows = {name: {"parameters": weight_count(m), "disk_mb": disk_bytes(m) / 1e6, **latency[name],
                   "accuracy": accuracy[name]} for name, m in models.items()}
    notes = [f"start: {args.checkpoint}; pipeline {args.pipeline}; {len(train)} training, {len(val)} evaluation "
             "examples", f"latency: CPU wall clock of one forward pass, {torch.get_num_threads()} thread(s), all "
             f"models measured in turns; batch 1 over {args.repeats} single texts, batch 32 over the first 32"]
    with fresh_output(args.out, "compress", args.force) as out:
        save_checkpoint(out / "model", model, tokenizer, extra_json={CLASSIFY_FILE: {"max_length": config.max_length}})
        report = write_report(rows, "start", out, title=f"Compression report: {args.pipeline}", notes=notes).read_text()
        (out / "stages.json").write_text(json.dumps(details, indent=2, default=str))
    print(report)
