"""INT8 on a CPU with AVX-512 VNNI: the SST-2 MiniLM classifier in fp32 against bf16 weights, dynamic INT8
(ours and torch.ao) and static INT8 calibrated on training batches, then the compression
pipeline (distil 3 layers -> prune 60 % -> INT8) against its 70 % latency target.

    # 1. train (cached in --out; no timing, so no lock: nice it)
    OMP_NUM_THREADS=1 nice -n 10 env PYTHONPATH=src python benchmarks/sst2_int8.py train --out runs/sst2_int8
    # 2. accuracy of every model on all of dev.tsv (no timing: nice it)
    OMP_NUM_THREADS=1 nice -n 10 env PYTHONPATH=src python benchmarks/sst2_int8.py accuracy --out runs/sst2_int8
    # 3. latency, every model in turns, under the bench lock
    OMP_NUM_THREADS=1 flock /tmp/attnlab-bench.lock env PYTHONPATH=src \
        python benchmarks/sst2_int8.py latency --out runs/sst2_int8

The recipe is issue 6's (benchmarks/bench_sst2_compression.py), on --train-examples phrases of
train.tsv (1,000 of them held out: early stopping and calibration, never dev).
"""

import argparse
import copy
import dataclasses
import itertools
import json
import os
import random
from pathlib import Path

import torch

from attnlab.checkpoint import load_checkpoint, save_checkpoint
from attnlab.compression import make_student, quantize_model, torch_dynamic_quantize
from attnlab.compression.distill import Distiller
from attnlab.compression.pipeline import run_stage
from attnlab.compression.report import interleaved_latency
from attnlab.data.classification import ClassificationData, LabelSet, read_labelled, stratified_split
from attnlab.interop.hf import load_minilm
from attnlab.training.finetune import FinetuneConfig, evaluate, fit

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ATTNLAB_DATA", REPO.parent / "shared" / "data")) / "sst2"
CONFIG = FinetuneConfig(epochs=1, batch_size=32, lr=1e-4, max_length=64, eval_every=200, patience=3)


def datasets(tokenizer, train_examples: int):
    """-> (labels, train, val, dev): a stratified sample of train.tsv, 1,000 of it held out; all of dev.tsv."""
    texts, labels = read_labelled(DATA / "train.tsv")
    if train_examples and train_examples < len(texts):
        _, keep = stratified_split(labels, train_examples / len(texts), seed=0)
        texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
    label_set = LabelSet.from_labels(labels)
    train_idx, val_idx = stratified_split(labels, 1000 / len(labels), seed=0)
    make = lambda idx: ClassificationData(tokenizer, [texts[i] for i in idx],  # noqa: E731
                                          label_set.ids([labels[i] for i in idx]), CONFIG.max_length)
    dev_texts, dev_labels = read_labelled(DATA / "dev.tsv")
    dev = ClassificationData(tokenizer, dev_texts, label_set.ids(dev_labels), CONFIG.max_length)
    return label_set, make(train_idx), make(val_idx), dev, dev_texts


def train(out: Path, train_examples: int, prune: float, stage_steps: int):
    encoder, tokenizer = load_minilm()
    labels, train_set, val, _, _ = datasets(tokenizer, train_examples)

    def cached(name, build):
        if (out / name / "config.json").exists():
            return load_checkpoint(out / name)[0]
        model = build()
        save_checkpoint(out / name, model, tokenizer)
        print(name, "saved", flush=True)
        return model

    def full():
        model = encoder.classifier_for(labels.names)
        fit(model, train_set, val, labels.names, CONFIG, log=print)
        return model

    def distilled():  # teacher layers 0, 2, 5; KL at T=2 plus the hard labels
        model = make_student(teacher, 3)
        fit(model, train_set, val, labels.names, short, loss_fn=Distiller(teacher, model, 2.0, 0.5), log=print)
        return model

    short = dataclasses.replace(CONFIG, max_steps=stage_steps)  # distillation and the fine-tune after pruning
    teacher = cached("full", full)
    student = cached("student", distilled)
    cached(f"student_pruned{round(prune * 100)}", lambda: run_stage(
        copy.deepcopy(student), ("prune", prune), train_set, val, labels.names, short, log=print)[0])


def compressed(out: Path, train_examples: int, prune: float):
    """-> ({name: model}, tokenizer, labels, dev set, dev texts): the trained models and their INT8 versions."""
    teacher, tokenizer = load_checkpoint(out / "full")
    student = load_checkpoint(out / "student")[0]
    pruned = load_checkpoint(out / f"student_pruned{round(prune * 100)}")[0]
    labels, train_set, val, dev, dev_texts = datasets(tokenizer, train_examples)
    calibration = [{k: v for k, v in batch.items() if k != "labels"}
                   for batch in itertools.islice(val.shuffled_batches(32, seed=0), 8)]
    percent = round(prune * 100)
    models = {
        "fp32": teacher,
        "bf16 weights": copy.deepcopy(teacher).to(torch.bfloat16),
        "INT8 dynamic (attnlab)": quantize_model(copy.deepcopy(teacher), "dynamic_int8"),
        "INT8 dynamic (torch.ao)": torch_dynamic_quantize(copy.deepcopy(teacher)),
        "INT8 static (attnlab, 256 calibration phrases)": quantize_model(copy.deepcopy(teacher), "static_int8",
                                                                          calibration=calibration),
        "distilled 3-layer": student,
        f"distil 3L -> prune {percent}%": pruned,
        f"distil 3L -> prune {percent}% -> INT8 dynamic": quantize_model(copy.deepcopy(pruned), "dynamic_int8"),
    }
    return models, tokenizer, labels, dev, dev_texts


def accuracy(out: Path, train_examples: int, prune: float):
    models, _, labels, dev, _ = compressed(out, train_examples, prune)
    results = {name: evaluate(model, dev, labels.names)["accuracy"] for name, model in models.items()}
    (out / "accuracy.json").write_text(json.dumps({"dev": len(dev), **results}, indent=1))
    print(json.dumps(results, indent=1))


def latency(out: Path, train_examples: int, prune: float, rounds: int):
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    models, tokenizer, _, dev, dev_texts = compressed(out, train_examples, prune)
    accuracies = json.loads((out / "accuracy.json").read_text())
    probe = random.Random(0).sample(dev_texts, rounds)
    results = interleaved_latency(models, tokenizer, probe, CONFIG.max_length, rounds=rounds, rounds_b32=rounds // 4)
    base = results["fp32"]
    print(f"{torch.get_num_threads()} thread(s); accuracy on {accuracies['dev']} dev phrases; batch 1 over {rounds} "
          f"dev phrases, batch 32 {rounds // 4} rounds")
    print("| model | dev accuracy | change | b1 p50 ms | b1 speed-up | b32 p50 ms | b32 speed-up |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        r.update(accuracy=accuracies[name], b1_speedup=base["b1_p50_ms"] / r["b1_p50_ms"],
                 b32_speedup=base["b32_p50_ms"] / r["b32_p50_ms"])
        print(f"| {name} | {r['accuracy']:.4f} | {100 * (r['accuracy'] - accuracies['fp32']):+.2f} pt | "
              f"{r['b1_p50_ms']:.2f} | {r['b1_speedup']:.2f}x | {r['b32_p50_ms']:.1f} | {r['b32_speedup']:.2f}x |")
    (out / "latency.json").write_text(json.dumps(results, indent=1))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("stage", choices=("train", "accuracy", "latency"))
    parser.add_argument("--out", default="runs/sst2_int8")
    parser.add_argument("--train-examples", type=int, default=5000, help="sampled from train.tsv; 0: all")
    parser.add_argument("--stage-steps", type=int, default=0,
                        help="steps of distillation and of the fine-tune after pruning (0: one epoch)")
    parser.add_argument("--prune", type=float, default=0.6, help="fraction of the student's heads and FFN neurons")
    parser.add_argument("--rounds", type=int, default=60, help="batch-1 rounds (batch 32: a quarter of them)")
    args = parser.parse_args()
    out = Path(args.out)
    if args.stage == "train":
        torch.set_num_threads(1)
        train(out, args.train_examples, args.prune, args.stage_steps)
    elif args.stage == "accuracy":
        torch.set_num_threads(1)
        accuracy(out, args.train_examples, args.prune)
    else:
        latency(out, args.train_examples, args.prune, args.rounds)


if __name__ == "__main__":
    main()
