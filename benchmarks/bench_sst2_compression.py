"""SST-2 from all-MiniLM-L6-v2: fine-tuning, LoRA, distillation, INT8 (ours vs torch.ao),
structured pruning and a combined pipeline, measured side by side in one run.

    ATTNLAB_DATA=/work/shared/data PYTHONPATH=src python benchmarks/bench_sst2_compression.py \
        --train-examples 0 --val-examples 1000 --eval-every 200 --short-examples 12000 \
        --eval-examples 0 --out runs/bench_sst2_full   # ~1.5 h on one core; add --lora-only beside it

Trains on train.tsv (or a stratified sample of it), holds out --val-examples of it for early
stopping, evaluates every model on the same dev.tsv examples, and measures CPU latency
(p50/p95, batch 1 and 32) with the same inputs for every model. Distillation and the
fine-tunes after pruning use --short-examples of the training set (--distill-full: distillation
uses all of it). Stages are cached in --out, so a rerun resumes.
"""

import argparse
import copy
import dataclasses
import json
import os
import random
import time
from pathlib import Path

import torch

from attnlab.checkpoint import load_checkpoint, save_checkpoint
from attnlab.compression import inject_lora, make_student, quantize_model, torch_dynamic_quantize
from attnlab.compression.distill import Distiller
from attnlab.compression.pipeline import run_stage
from attnlab.compression.quantize import linear_weight_bytes
from attnlab.compression.report import disk_bytes, interleaved_latency, measure, weight_count, write_report
from attnlab.data.classification import ClassificationData, LabelSet, read_labelled, stratified_split
from attnlab.interop.hf import load_minilm
from attnlab.training.finetune import FinetuneConfig, evaluate, fit

REPO = Path(__file__).resolve().parents[1]
LORA_VARIANTS = {"q,v": 8, "q,k,v,o,ffn": 4}  # targets -> rank, each < 2 % of parameters trainable
DATA = Path(os.environ.get("ATTNLAB_DATA", REPO.parent / "shared" / "data")) / "sst2"


def sample(path, limit, seed):
    texts, labels = read_labelled(path)
    if limit and limit < len(texts):
        _, keep = stratified_split(labels, limit / len(texts), seed)
        texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
    return texts, labels


def block_parameters(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith("blocks."))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--train-examples", type=int, default=4000, help="sampled from train.tsv; 0: all")
    parser.add_argument("--val-examples", type=int, default=400, help="of those, held out for early stopping")
    parser.add_argument("--short-examples", type=int, default=0,
                        help="training examples for distillation and the fine-tunes after pruning; 0: all")
    parser.add_argument("--distill-full", action="store_true",
                        help="distil the student on all training examples, not --short-examples (own cache and rows)")
    parser.add_argument("--pipeline-prune", type=float, default=0.4,
                        help="fraction of the student's heads and FFN neurons the combined pipeline prunes")
    parser.add_argument("--eval-examples", type=int, default=872, help="sampled from dev.tsv; 0: all")
    parser.add_argument("--eval-every", type=int, default=40, help="steps between early-stopping evaluations")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", default="runs/bench_sst2")
    parser.add_argument("--lora-only", action="store_true", help="train and score only LoRA (run beside the rest)")
    parser.add_argument("--lora-targets", default="q,v", choices=sorted(LORA_VARIANTS))
    parser.add_argument("--lora-pooling", default="cls", choices=("cls", "mean"), help="what LoRA's classifier reads")
    parser.add_argument("--lora-lr", type=float, default=1e-3)
    parser.add_argument("--lora-biases", action="store_true", help="LoRA also trains every bias (BitFit)")
    parser.add_argument("--lora-epochs", type=int, help="default: --epochs")
    parser.add_argument("--latency-only", action="store_true",
                        help="reuse the trained models and accuracies in --out; measure latency again, interleaved")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"

    def record(name, **values):  # re-read first: a --lora-only process may write beside this one
        results = json.loads(results_path.read_text()) if results_path.exists() else {}
        results[name] = {**results.get(name, {}), **values}
        results_path.write_text(json.dumps(results, indent=2))
        print(name, json.dumps(values), flush=True)

    encoder, tokenizer = load_minilm()
    train_texts, train_labels = sample(DATA / "train.tsv", args.train_examples, seed=0)
    dev_texts, dev_labels = sample(DATA / "dev.tsv", args.eval_examples, seed=0)
    labels = LabelSet.from_labels(train_labels)
    train_idx, val_idx = stratified_split(train_labels, args.val_examples / len(train_labels), seed=0)  # never dev
    base_config = FinetuneConfig(epochs=args.epochs, batch_size=32, lr=1e-4, max_length=64,
                                 eval_every=args.eval_every, patience=3)
    make = lambda idx: ClassificationData(tokenizer, [train_texts[i] for i in idx],  # noqa: E731
                                          labels.ids([train_labels[i] for i in idx]), base_config.max_length)
    train, val = make(train_idx), make(val_idx)
    short_idx = train_idx
    if args.short_examples and args.short_examples < len(train_idx):
        short_idx = sorted(random.Random(0).sample(train_idx, args.short_examples))
    short_train = make(short_idx)
    dev = ClassificationData(tokenizer, dev_texts, labels.ids(dev_labels), base_config.max_length)
    probe = dev_texts[:max(32, args.repeats)]
    record("setup", train=len(train), short_train=len(short_train), val=len(val), dev=len(dev), threads=args.threads,
           note=f"stratified samples of train.tsv ({args.train_examples}) and dev.tsv ({args.eval_examples})")

    def cached(name, build):
        """Train once; later runs load the checkpoint."""
        path = out / name
        if (path / "config.json").exists():
            return load_checkpoint(path)[0]
        model = build()
        save_checkpoint(path, model, tokenizer)
        return model

    models = {}

    def score(name, model, **extra):
        models[name] = model
        known = json.loads(results_path.read_text()).get(name, {})
        if args.latency_only and "accuracy" in known:
            return
        accuracy = evaluate(model, dev, labels.names)["accuracy"]
        if args.latency_only:  # latency comes from the interleaved pass at the end
            record(name, accuracy=accuracy, parameters=weight_count(model), disk_mb=disk_bytes(model) / 1e6, **extra)
        else:
            record(name, **measure(model, tokenizer, probe, base_config.max_length, accuracy, args.repeats), **extra)

    # LoRA + classifier and pooler: trained last, or beside the rest with --lora-only
    def lora_stage(targets, train_if_missing=True):
        rank, pooling = LORA_VARIANTS[targets], args.lora_pooling
        epochs, lr = args.lora_epochs or args.epochs, args.lora_lr
        name = f"LoRA r={rank} ({targets}{', mean pooling' if pooling == 'mean' else ''}" \
               f"{', biases' if args.lora_biases else ''})"
        path = "lora" + ("" if targets == "q,v" else "_" + targets.replace(",", "")) + (
            "" if pooling == "cls" else "_mean") + ("_biases" if args.lora_biases else "")

        def lora():
            model = inject_lora(copy.deepcopy(encoder).classifier_for(labels.names, pooling), rank=rank,
                                alpha=2 * rank, targets=targets, train_also=("classifier", "pooler"),
                                train_biases=args.lora_biases)
            trainable = model.num_parameters(trainable_only=True)
            result = fit(model, train, val, labels.names, dataclasses.replace(base_config, lr=lr, epochs=epochs))
            record(name, train_seconds=result["seconds"], steps=result["steps"], lr=lr, epochs=epochs,
                   trainable=trainable, trainable_fraction=trainable / model.num_parameters())
            return model

        if train_if_missing or (out / path / "config.json").exists():
            score(name, cached(path, lora))  # unmerged; merged it has the full model's architecture and speed

    if args.lora_only:
        lora_stage(args.lora_targets)
        return

    # full fine-tuning (the teacher and the starting model)
    def full():
        model = copy.deepcopy(encoder).classifier_for(labels.names)
        result = fit(model, train, val, labels.names, base_config)
        record("full fine-tune", train_seconds=result["seconds"], steps=result["steps"])
        return model
    teacher = cached("full", full)
    score("full fine-tune", teacher, block_params=block_parameters(teacher),
          linear_weight_bytes=linear_weight_bytes(teacher))

    # distilled 3-layer student (teacher layers 0, 2, 5)
    distill_train, tag = (train, " (distilled on all)") if args.distill_full else (short_train, "")
    cache_tag = "_all" if args.distill_full else ""

    def distilled():
        student = make_student(teacher, 3)
        result = fit(student, distill_train, val, labels.names, dataclasses.replace(base_config, lr=1e-4),
                     loss_fn=Distiller(teacher, student, temperature=2.0, alpha=0.5))
        record("distilled 3-layer" + tag, train_seconds=result["seconds"], steps=result["steps"])
        return student
    student = cached("student" + cache_tag, distilled)
    score("distilled 3-layer" + tag, student)

    # INT8: ours (dynamic, per-channel) vs torch.ao dynamic quantisation, same float model
    ours = quantize_model(copy.deepcopy(teacher), "dynamic_int8")
    score("INT8 dynamic (attnlab)", ours, linear_weight_bytes=linear_weight_bytes(ours))
    score("INT8 weight-only (attnlab)", quantize_model(copy.deepcopy(teacher), "int8"))
    score("INT8 dynamic (torch.ao)", torch_dynamic_quantize(copy.deepcopy(teacher)))

    # structured pruning: 40% of heads and FFN neurons (= 40% of block parameters), short fine-tune
    def pruned():
        model = copy.deepcopy(teacher)
        model, details = run_stage(model, ("prune", 0.4), short_train, val, labels.names,
                                   dataclasses.replace(base_config, lr=5e-5), prune_epochs=1)
        record("pruned 40%", prune_train_seconds=details["train_seconds"])
        return model
    pruned_model = cached("pruned", pruned)
    score("pruned 40%", pruned_model, block_params=block_parameters(pruned_model))

    # combined: distilled student -> prune -> INT8
    fraction, percent = args.pipeline_prune, round(args.pipeline_prune * 100)
    pipeline_tag = cache_tag + ("" if percent == 40 else f"_prune{percent}")

    def student_pruned():
        model = copy.deepcopy(student)
        model, details = run_stage(model, ("prune", fraction), short_train, val, labels.names,
                                   dataclasses.replace(base_config, lr=1e-4), prune_epochs=1)
        return model
    combined = quantize_model(cached("student_pruned" + pipeline_tag, student_pruned), "dynamic_int8")
    score(f"distill 3L -> prune {percent}% -> INT8" + tag, combined)
    score("distill 3L -> INT8" + tag, quantize_model(copy.deepcopy(student), "dynamic_int8"))

    for targets in LORA_VARIANTS:
        lora_stage(targets, train_if_missing=targets == "q,v")
    for name, values in interleaved_latency(models, tokenizer, probe, base_config.max_length, args.repeats).items():
        record(name, **values, latency="interleaved")
    results = json.loads(results_path.read_text())
    rows = {k: {c: v.get(c) for c in ("parameters", "disk_mb", "b1_p50_ms", "b1_p95_ms", "b32_p50_ms", "b32_p95_ms",
                                      "throughput", "accuracy")}
            for k, v in sorted(results.items(), key=lambda item: item[0] != "full fine-tune")
            if k != "setup" and "b1_p50_ms" in v}
    write_report(rows, "full fine-tune", out, title="SST-2 compression from all-MiniLM-L6-v2",
                 notes=[f"{len(train)} training / {len(val)} early-stopping examples from train.tsv "
                        f"({len(short_train)} for distillation and after pruning); "
                        f"accuracy on {len(dev)} examples sampled from dev.tsv",
                        f"{args.threads} thread(s); latency medians over "
                        f"{args.repeats} single texts (batch 1)"])
    print((out / "report.md").read_text())


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t0:.0f} s")
