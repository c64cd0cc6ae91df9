"""finetune, classify, compress: adapt a pretrained encoder to a labelled task and make it small."""

import copy
import dataclasses
import json
import sys
from pathlib import Path

import torch

from ..checkpoint import CONFIG_FILE, LEGACY_LABELS_FILE, load_checkpoint, read_json, save_checkpoint
from ..compression import inject_lora, save_lora
from ..compression.pipeline import parse_pipeline, run_stage
from ..compression.report import disk_bytes, interleaved_latency, weight_count, write_report
from ..data.classification import ClassificationData, LabelSet, read_labelled, stratified_split
from ..errors import UserError
from ..evaluation import format_confusion
from ..training.finetune import FinetuneConfig, evaluate, fit, predict
from .common import print_json, resolve_checkpoint

CLASSIFY_FILE = "classify.json"  # what `classify` reuses from fine-tuning: {"max_length": ...}
BUNDLED = ("minilm", "all-MiniLM-L6-v2")


def register(sub):
    p = sub.add_parser("finetune", help="fine-tune a pretrained encoder for text classification (TSV/CSV/JSONL)")
    p.add_argument("--base", default="minilm", help="'minilm' (bundled all-MiniLM-L6-v2), an attnlab checkpoint "
                   "or a Hugging Face checkpoint directory")
    p.add_argument("--train", required=True, help="training file with a text and a label column")
    p.add_argument("--val", help="validation file (default: a stratified 10%% of --train)")
    p.add_argument("--out", required=True, help="output checkpoint directory")
    p.add_argument("--pooling", choices=("cls", "mean"),
                   help="what the classifier reads: the [CLS] state or the mean of the tokens, which suits "
                        "sentence-embedding bases such as all-MiniLM-L6-v2 (default: the base's own, else cls)")
    _data_options(p)
    _train_options(p)
    p.add_argument("--lora-rank", type=int, help="train LoRA adapters of this rank (and the head) instead of all weights")
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--lora-targets", default="q,v", help="comma list of q, k, v, o, ffn (default q,v)")
    p.add_argument("--lora-biases", action="store_true", help="with LoRA, also train every bias vector (BitFit)")
    p.set_defaults(run=finetune)

    p = sub.add_parser("classify", help="classify texts with a fine-tuned checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--input", help="TSV/CSV/JSONL file (default: one text per line on stdin)")
    p.add_argument("--text-column", help="text column of --input (default: sentence or text)")
    p.add_argument("--label-column", default="label", help="if --input has it, accuracy/F1 are reported too")
    p.add_argument("--batch-size", type=int, default=64)
    p.set_defaults(run=classify)

    p = sub.add_parser("compress", help="run a compression pipeline on a fine-tuned classifier and write a report")
    p.add_argument("checkpoint", help="fine-tuned classifier (from attnlab finetune)")
    p.add_argument("--pipeline", default="distill:3,prune:0.4,quantize:dynamic_int8",
                   help="comma list of distill:LAYERS, prune:FRACTION, quantize:SCHEME")
    p.add_argument("--train", required=True, help="training file (for distillation and fine-tuning after pruning)")
    p.add_argument("--val", required=True, help="evaluation file")
    p.add_argument("--out", required=True, help="output directory: model/, report.md, report.png")
    _data_options(p)
    _train_options(p)
    p.add_argument("--repeats", type=int, default=20, help="latency repeats")
    p.set_defaults(run=compress)


def _data_options(p):
    p.add_argument("--text-column", help="default: sentence or text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--max-train", type=int, help="use at most this many training examples (stratified sample)")
    p.add_argument("--max-val", type=int, help="use at most this many validation examples (stratified sample)")


def _train_options(p):
    defaults = FinetuneConfig()
    for field in dataclasses.fields(FinetuneConfig):
        flag = "--" + field.name.replace("_", "-")
        p.add_argument(flag, type=type(getattr(defaults, field.name)), default=getattr(defaults, field.name),
                       help=f"default {getattr(defaults, field.name)}")


def _finetune_config(args) -> FinetuneConfig:
    return FinetuneConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(FinetuneConfig)})


def load_base(base):
    """'minilm', an attnlab checkpoint, or a Hugging Face directory -> (model, tokenizer)."""
    if base in BUNDLED:
        from ..interop.hf import load_minilm
        model, tokenizer = load_minilm()
    else:
        path = Path(base)
        if not (path / CONFIG_FILE).is_file():
            raise UserError(f"--base {base}: not 'minilm' and not a checkpoint directory with {CONFIG_FILE}")
        if "family" in read_json(path / CONFIG_FILE):
            model, tokenizer = load_checkpoint(path)
        else:
            from ..interop.hf import import_hf
            model, tokenizer = import_hf(path)
    if tokenizer is None or not hasattr(tokenizer, "batch_encode"):
        raise UserError(f"--base {base} has no subword tokenizer (tokenizer.json or vocab.txt) to encode text with")
    return model, tokenizer


def _subsample(texts, labels, limit, seed=0):
    if not limit or limit >= len(texts):
        return texts, labels
    _, keep = stratified_split(labels, limit / len(texts), seed)
    return [texts[i] for i in keep], [labels[i] for i in keep]


def _task_data(args, tokenizer, label_set=None, val_required=False):
    """-> (label set, train data, val data) from --train / --val (or a stratified split)."""
    texts, labels = read_labelled(args.train, args.text_column, args.label_column)
    texts, labels = _subsample(texts, labels, args.max_train)
    label_set = label_set or LabelSet.from_labels(labels)
    if args.val:
        val_texts, val_labels = read_labelled(args.val, args.text_column, args.label_column)
    elif val_required:
        raise UserError("--val is required")
    else:
        train_idx, val_idx = stratified_split(labels, 0.1, seed=args.seed)
        val_texts, val_labels = [texts[i] for i in val_idx], [labels[i] for i in val_idx]
        texts, labels = [texts[i] for i in train_idx], [labels[i] for i in train_idx]
    val_texts, val_labels = _subsample(val_texts, val_labels, args.max_val)
    train = ClassificationData(tokenizer, texts, label_set.ids(labels, args.train), args.max_length)
    val = ClassificationData(tokenizer, val_texts, label_set.ids(val_labels, args.val or "the validation split"),
                             args.max_length)
    return label_set, train, val


def finetune(args):
    config = _finetune_config(args)
    encoder, tokenizer = load_base(args.base)
    label_set, train, val = _task_data(args, tokenizer)
    model = encoder.classifier_for(label_set.names, args.pooling)
    if args.lora_rank:
        inject_lora(model, args.lora_rank, args.lora_alpha, args.lora_dropout, args.lora_targets,
                    train_also=("classifier", "pooler"), train_biases=args.lora_biases)
    trainable, total = model.num_parameters(trainable_only=True), model.num_parameters()
    log = lambda message: print(message, file=sys.stderr)  # noqa: E731
    log(f"{len(train)} training / {len(val)} validation examples, labels {label_set.names}; "
        f"training {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%)")
    result = fit(model, train, val, label_set.names, config, log=log)
    report = {"validation": result["best"], "steps": result["steps"], "train_seconds": result["seconds"],
              "trainable_parameters": trainable, "parameters": total, "history": result["history"]}
    save_checkpoint(args.out, model, tokenizer, extra_json={
        CLASSIFY_FILE: {"max_length": config.max_length}, "finetune_report.json": report})
    if args.lora_rank:
        save_lora(model, Path(args.out) / "adapter.safetensors")
    log(format_confusion(result["best"]))
    print_json({"out": args.out, "accuracy": result["best"]["accuracy"], "macro_f1": result["best"]["macro_f1"],
                "f1": result["best"]["f1"], "confusion_matrix": result["best"]["confusion_matrix"],
                "steps": result["steps"], "train_seconds": round(result["seconds"], 1)})


def load_classifier(path):
    """-> (model, tokenizer, label names, max_length) from a fine-tuned checkpoint; one written
    before label names moved into config.json keeps them (and max_length) in labels.json."""
    path = resolve_checkpoint(path)
    model, tokenizer = load_checkpoint(path)
    id2label = model.config.to_dict().get("id2label")
    if not id2label:
        raise UserError(f"{path} is not a classifier checkpoint (its {CONFIG_FILE} has no id2label); "
                        "make one with attnlab finetune")
    names = [id2label[str(i)] for i in range(len(id2label))]
    return model, tokenizer, names, _max_length(path)


def _max_length(path: Path) -> int:
    for name in (CLASSIFY_FILE, LEGACY_LABELS_FILE):
        if (path / name).is_file():
            return read_json(path / name).get("max_length", 128)
    return 128


def classify(args):
    model, tokenizer, names, max_length = load_classifier(args.checkpoint)
    gold = None
    if args.input:
        texts, gold = read_labelled(args.input, args.text_column, args.label_column, require_labels=False)
    else:
        texts = [line for line in sys.stdin.read().splitlines() if line.strip()]
    if not texts:
        raise UserError("no texts to classify")
    label_set = LabelSet(names)
    data = ClassificationData(tokenizer, texts, label_set.ids(gold, args.input) if gold else None, max_length)
    probabilities = predict(model, data, args.batch_size)
    for text, probs in zip(texts, probabilities):
        best = int(probs.argmax())
        print(json.dumps({"text": text, "label": names[best], "score": round(float(probs[best]), 4)},
                         ensure_ascii=False))
    if gold:
        metrics = evaluate(model, data, names, args.batch_size)
        print(format_confusion(metrics), file=sys.stderr)
        print(f"accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f}", file=sys.stderr)


def compress(args):
    stages = parse_pipeline(args.pipeline)
    config = _finetune_config(args)
    model, tokenizer, names, _ = load_classifier(args.checkpoint)
    _, train, val = _task_data(args, tokenizer, LabelSet(names), val_required=True)
    log = lambda message: print(message, file=sys.stderr)  # noqa: E731
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
    out = Path(args.out)
    save_checkpoint(out / "model", model, tokenizer, extra_json={CLASSIFY_FILE: {"max_length": config.max_length}})
    notes = [f"start: {args.checkpoint}; pipeline {args.pipeline}; {len(train)} training, {len(val)} evaluation "
             "examples", f"latency: CPU wall clock of one forward pass, {torch.get_num_threads()} thread(s), all "
             f"models measured in turns; batch 1 over {args.repeats} single texts, batch 32 over the first 32"]
    report = write_report(rows, "start", out, title=f"Compression report: {args.pipeline}", notes=notes)
    (out / "stages.json").write_text(json.dumps(details, indent=2, default=str))
    print(report.read_text())
