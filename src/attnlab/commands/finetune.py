"""finetune: adapt a pretrained encoder to a labelled text-classification task; also the
labelled-data and training options that compress shares."""

import dataclasses
from pathlib import Path

from ..checkpoint import CONFIG_FILE, load_checkpoint, read_json, save_checkpoint
from ..compression import inject_lora, save_lora
from ..data.classification import ClassificationData, LabelSet, read_labelled, stratified_split
from ..errors import UserError
from ..progress import say
from ..evaluation import format_confusion
from ..models.base import ENCODER
from ..training.finetune import FinetuneConfig, fit
from .classify import CLASSIFY_FILE
from .common import FORCE_HELP, claim_output, for_kind, fresh_output, print_json

BUNDLED = ("minilm", "all-MiniLM-L6-v2")


def register(sub):
    p = sub.add_parser("finetune", help="fine-tune a pretrained encoder for text classification (TSV/CSV/JSONL)")
    p.add_argument("--base", default="minilm", help="'minilm' (bundled all-MiniLM-L6-v2), an attnlab checkpoint "
                   "or a Hugging Face checkpoint directory")
    p.add_argument("--train", required=True, help="training file with a text and a label column")
    p.add_argument("--val", help="validation file (default: a stratified 10%% of --train)")
    p.add_argument("--out", required=True, help="output checkpoint directory (an earlier finetune's is replaced once "
                   "the new one is complete; any other non-empty directory is refused)")
    p.add_argument("--force", action="store_true", help=FORCE_HELP)
    p.add_argument("--pooling", choices=("cls", "mean"),
                   help="what the classifier reads: the [CLS] state or the mean of the tokens, which suits "
                        "sentence-embedding bases such as all-MiniLM-L6-v2 (default: the base's own, else cls)")
    data_options(p)
    train_options(p)
    p.add_argument("--lora-rank", type=int, help="train LoRA adapters of this rank (and the head) instead of all weights")
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--lora-targets", default="q,v", help="comma list of q, k, v, o, ffn (default q,v)")
    p.add_argument("--lora-biases", action="store_true", help="with LoRA, also train every bias vector (BitFit)")
    p.set_defaults(run=finetune)


def data_options(p):
    p.add_argument("--text-column", help="default: sentence or text (with --no-header: 1)")
    p.add_argument("--label-column", help="default: label (with --no-header: 2)")
    p.add_argument("--no-header", action="store_true",
                   help="the TSV/CSV files have no header row: give the columns by position, from 1")
    p.add_argument("--max-train", type=int, help="use at most this many training examples (stratified sample)")
    p.add_argument("--max-val", type=int, help="use at most this many validation examples (stratified sample)")


def train_options(p):
    defaults = FinetuneConfig()
    for field in dataclasses.fields(FinetuneConfig):
        flag = "--" + field.name.replace("_", "-")
        p.add_argument(flag, type=type(getattr(defaults, field.name)), default=getattr(defaults, field.name),
                       help=f"default {getattr(defaults, field.name)}")


def finetune_config(args) -> FinetuneConfig:
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
            load, path = for_kind("finetune", path, {ENCODER: load_checkpoint})
            model, tokenizer = load(path)
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


def task_data(args, tokenizer, label_set=None, val_required=False):
    """-> (label set, train data, val data) from --train / --val (or a stratified split)."""
    texts, labels = read_labelled(args.train, args.text_column, args.label_column, header=not args.no_header)
    texts, labels = _subsample(texts, labels, args.max_train)
    label_set = label_set or LabelSet.from_labels(labels)
    if args.val:
        val_texts, val_labels = read_labelled(args.val, args.text_column, args.label_column, header=not args.no_header)
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
    claim_output(args.out, "finetune", args.force)  # refuse before the long work, and again before writing
    config = finetune_config(args)
    encoder, tokenizer = load_base(args.base)
    label_set, train, val = task_data(args, tokenizer)
    model = encoder.classifier_for(label_set.names, args.pooling)
    if args.lora_rank:
        inject_lora(model, args.lora_rank, args.lora_alpha, args.lora_dropout, args.lora_targets,
                    train_also=("classifier", "pooler"), train_biases=args.lora_biases)
    trainable, total = model.num_parameters(trainable_only=True), model.num_parameters()
    log = say
    log(f"{len(train)} training / {len(val)} validation examples, labels {label_set.names}; "
        f"training {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%)")
    result = fit(model, train, val, label_set.names, config, log=log)
    report = {"validation": result["best"], "steps": result["steps"], "train_seconds": result["seconds"],
              "trainable_parameters": trainable, "parameters": total, "history": result["history"]}
    with fresh_output(args.out, "finetune", args.force) as out:
        save_checkpoint(out, model, tokenizer, extra_json={
            CLASSIFY_FILE: {"max_length": config.max_length}, "finetune_report.json": report})
        if args.lora_rank:
            save_lora(model, out / "adapter.safetensors")
    log(format_confusion(result["best"]))
    print_json({"out": args.out, "accuracy": result["best"]["accuracy"], "macro_f1": result["best"]["macro_f1"],
                "f1": result["best"]["f1"], "confusion_matrix": result["best"]["confusion_matrix"],
                "steps": result["steps"], "train_seconds": round(result["seconds"], 1)})
