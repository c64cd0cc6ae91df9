"""classify: label texts with a fine-tuned encoder (a checkpoint from `attnlab finetune`), or the
nodes of a graph with a graph network."""

import json
import sys
from pathlib import Path

from ..checkpoint import CONFIG_FILE, LEGACY_LABELS_FILE, load_checkpoint, read_json
from ..data.classification import ClassificationData, LabelSet, read_labelled
from ..data.graph import read_graph
from ..errors import UserError
from ..evaluation import format_confusion
from ..evaluation.graph import label_names, node_probabilities, node_scores
from ..models.base import ENCODER, GRAPH
from ..training.finetune import evaluate, predict
from .common import for_kind

CLASSIFY_FILE = "classify.json"  # what `classify` reuses from fine-tuning: {"max_length": ...}


def register(sub):
    p = sub.add_parser("classify", help="classify texts with a fine-tuned checkpoint, or a graph's nodes")
    p.add_argument("checkpoint")
    p.add_argument("--input", help="TSV/CSV/JSONL file (default: one text per line on stdin); for a graph network "
                   "an .npz graph (its test accuracy is reported too) or a JSON file {x, edge_index}")
    p.add_argument("--text-column", help="text column of --input (default: sentence or text)")
    p.add_argument("--label-column", default="label", help="if --input has it, accuracy/F1 are reported too")
    p.add_argument("--batch-size", type=int, default=64)
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
    run, path = for_kind("classify", args.checkpoint, {ENCODER: classify_texts, GRAPH: classify_nodes})
    run(args, path)


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


def classify_texts(args, path):
    model, tokenizer, names, max_length = load_classifier("classify", args.checkpoint)
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
