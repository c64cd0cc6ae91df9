"""classify: label texts with a fine-tuned encoder (a checkpoint from `attnlab finetune`), image,
audio or video files with a classifier of that modality, the nodes of a graph with a graph
network (checkpoints from `attnlab train`), or images zero-shot with a dual encoder (CLIP) from
class names and prompt templates."""

import json
import sys
from pathlib import Path

from ..checkpoint import CONFIG_FILE, LEGACY_LABELS_FILE, load_checkpoint, read_json
from ..data.classification import ClassificationData, LabelSet, read_labelled
from ..data.graph import read_graph
from ..data.media import predict_media, read_labelled_media
from ..errors import UserError
from ..evaluation import classification_metrics, format_confusion
from ..evaluation.graph import label_names, node_probabilities, node_scores
from ..inference.attention_maps import attention_rollout, save_overlay
from ..evaluation.retrieval import zero_shot_probabilities
from ..models.base import CLASSIFIER, DUAL_ENCODER, ENCODER, GRAPH, family_spec
from ..training.finetune import predict
from ..training.tasks.media import model_names
from .common import for_kind, output_dir

CLASSIFY_FILE = "classify.json"  # what `classify` reuses from fine-tuning: {"max_length": ...}


def register(sub):
    p = sub.add_parser("classify", help="classify texts with a fine-tuned checkpoint, image/audio/video files "
                                        "with a classifier, or a graph's nodes")
    p.add_argument("checkpoint")
    p.add_argument("files", nargs="*", help="classifiers: files of the model's modality (PNG, WAV, .npy, ...)")
    p.add_argument("--input", help="TSV/CSV/JSONL file (default: one text per line on stdin); for a classifier a "
                   "folder with one subfolder per class, or an .npz with x and y: accuracy and F1 are reported too; "
                   "for a graph network an .npz graph (its test accuracy is reported too) or a JSON {x, edge_index}")
    p.add_argument("--text-column", help="text column of --input (default: sentence or text; with --no-header: 1)")
    p.add_argument("--label-column",
                   help="if --input has it, accuracy/F1 are reported too (default: label; with --no-header: 2)")
    p.add_argument("--no-header", action="store_true",
                   help="--input is a TSV/CSV without a header row: give the columns by position, from 1")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--attention-out", help="image classifiers: draw each image's attention rollout ([CLS] to "
                   "patches) over it as DIR/<n>-<name>.png")
    p.add_argument("--labels", help="dual encoders: the class names, comma-separated (default: a labelled --input's)")
    p.add_argument("--template", action="append", help="dual encoders: a prompt with {} for the class name, e.g. "
                   "'a photo of the digit {}'; repeat it to average several (default: the bare name)")
    p.set_defaults(run=classify)


def load_classifier(verb, checkpoint):
    """-> (model, tokenizer, label names, max_length) from a fine-tuned encoder; one written
    before label names moved into config.json keeps them (and max_length) in labels.json."""
    load, path = for_kind(verb, checkpoint, {ENCODER: load_checkpoint})
    model, tokenizer = load(path)
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
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be a positive integer, got {args.batch_size}")
    run, path = for_kind("classify", args.checkpoint, {ENCODER: classify_texts, CLASSIFIER: classify_media,
                                                         GRAPH: classify_nodes, DUAL_ENCODER: classify_zero_shot})
    run(args, path)


def classify_media(args, path):
    """One JSON line per file or labelled item: its name, label and score; with labels, the
    confusion matrix, accuracy and macro F1 on stderr."""
    model, processor = load_checkpoint(path)
    if processor is None:
        raise UserError(f"{path} has no processor.json; classify needs the checkpoint's processor")
    names = model_names(model)
    if bool(args.files) == bool(args.input):
        raise UserError("give the files to classify, or --input with a labelled folder or .npz, not both")
    if args.input:
        data = read_labelled_media(args.input, processor, names)
        items, sources, gold = data.items, [f"{args.input}[{i}]" for i in range(len(data))], data.labels.tolist()
    else:
        items, sources, gold = [processor.read(f) for f in args.files], list(args.files), None
    out = attention_dir(args.attention_out, model) if args.attention_out else None
    probabilities = predict_media(model, processor, items, args.batch_size)
    for index, (source, probs) in enumerate(zip(sources, probabilities)):
        best = int(probs.argmax())
        print(json.dumps({"input": source, "label": names[best], "score": round(float(probs[best]), 4)},
                         ensure_ascii=False))
        if out is not None:
            heat = attention_rollout(model, processor([items[index]])["pixel_values"])[0]
            save_overlay(items[index], heat, out / f"{index}-{Path(source).stem}.png",
                         f"{names[best]} ({float(probs[best]):.2f})")
    if gold is not None:
        report(classification_metrics(probabilities.argmax(-1).tolist(), gold, names))


def classify_zero_shot(args, path):
    """Images labelled by the nearest class prompt: one JSON line per file or labelled item; with
    labels, the confusion matrix, accuracy and macro F1 on stderr."""
    model, processor = load_checkpoint(path)
    if processor is None:
        raise UserError(f"{path} has no processor.json and tokenizer.json; classify needs the checkpoint's processor")
    if bool(args.files) == bool(args.input):
        raise UserError("give the image files to classify, or --input with a labelled folder or .npz, not both")
    names = parse_labels(args.labels) if args.labels else None
    if args.input:
        data = read_labelled_media(args.input, processor.image, names)
        items, sources, gold, names = data.items, [f"{args.input}[{i}]" for i in range(len(data))], \
            data.labels.tolist(), data.names
    elif names is None:
        raise UserError('zero-shot classification needs the class names: --labels "cat,dog,..."')
    else:
        items, sources, gold = [processor.read(f) for f in args.files], list(args.files), None
    probabilities = zero_shot_probabilities(model, processor, items, names, args.template or ["{}"])
    for source, probs in zip(sources, probabilities):
        best = int(probs.argmax())
        print(json.dumps({"input": source, "label": names[best], "score": round(float(probs[best]), 4)},
                         ensure_ascii=False))
    if gold is not None:
        report(classification_metrics(probabilities.argmax(-1).tolist(), gold, names))


def parse_labels(text: str) -> list:
    names = [name.strip() for name in text.split(",")]
    if not all(names) or len(set(names)) != len(names):
        raise UserError(f"--labels {text!r} must be distinct non-empty names separated by commas")
    return names


def classify_nodes(args, path):
    """One JSON line per node: its label and score; with an .npz graph, the accuracies on stderr."""
    model, processor = load_checkpoint(path)
    source = args.input or "stdin"
    graph = read_graph(args.input) if args.input and args.input.endswith(".npz") else None
    if graph is None:
        posted = _read_json_graph(args.input)
        batch = processor.to_batch(posted.get("x"), posted.get("edge_index"), what=source)
    else:
        batch = processor.to_batch(graph.x, graph.edge_index, what=source)
    names = label_names(model.config)
    for node, probs in enumerate(node_probabilities(model, batch)):
        best = int(probs.argmax())
        print(json.dumps({"node": node, "label": names[best], "score": round(float(probs[best]), 4)}))
    if graph is not None:
        scores = node_scores(model, processor, graph, source)
        print(f"test accuracy {scores['test_accuracy']:.4f}, val accuracy {scores['val_accuracy']:.4f}",
              file=sys.stderr)


def _read_json_graph(path) -> dict:
    if path and not Path(path).is_file():
        raise UserError(f"--input {path} does not exist")
    text = Path(path).read_text() if path else sys.stdin.read()
    try:
        graph = json.loads(text)
    except ValueError:
        raise UserError(f"{path or 'stdin'} is neither an .npz graph nor a JSON graph {{x, edge_index}}") from None
    if not isinstance(graph, dict) or "x" not in graph or "edge_index" not in graph:
        raise UserError(f"{path or 'stdin'}: a graph in JSON is an object with x (node features) and edge_index")
    return graph


def attention_dir(path, model) -> Path:
    spec = family_spec(model)
    if spec.modality != "image":
        raise UserError(f"--attention-out draws attention over images; the {spec.name} model reads {spec.modality}")
    out = output_dir(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def report(metrics):
    print(format_confusion(metrics), file=sys.stderr)
    print(f"accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f}", file=sys.stderr)


def classify_texts(args, path):
    if args.files:
        raise UserError("file arguments are for image, audio or video classifiers; give texts with --input or stdin")
    model, tokenizer, names, max_length = load_classifier("classify", path)
    gold = None
    if args.input:
        texts, gold = read_labelled(args.input, args.text_column, args.label_column, require_labels=False,
                                   header=not args.no_header)
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
        report(classification_metrics(probabilities.argmax(dim=-1).tolist(), data.label_ids, names))
