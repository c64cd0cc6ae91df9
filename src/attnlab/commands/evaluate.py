"""eval: perplexity of a causal LM, masked-LM perplexity and accuracy of an encoder,
BLEU/chrF/ROUGE of an encoder-decoder, accuracy, macro F1 and the confusion matrix of an image,
audio or video classifier, the node accuracy of a graph network, or a dual encoder's retrieval
recall@k on image-caption pairs and zero-shot accuracy on a labelled image set. (The module is not
eval.py, which would shadow a builtin.)"""

import sys

from ..checkpoint import load_checkpoint
from ..data.corpus import read_text
from ..data.graph import read_graph
from ..data.media import predict_media, read_labelled_media
from ..data.pairs import is_pairs
from ..data.pairs import read_pairs as read_pairs_file
from ..data.seq2seq import check_length, encode_source, read_pairs
from ..errors import UserError
from ..evaluation import (classification_metrics, format_confusion, masked_lm_scores, perplexity, plot_confusion,
                          text_metrics)
from ..evaluation.graph import node_scores
from ..inference.seq2seq import translate
from ..evaluation.retrieval import pair_scores, zero_shot_probabilities
from ..models.base import CAUSAL_LM, CLASSIFIER, DUAL_ENCODER, ENCODER, GRAPH, SEQ2SEQ
from ..training.tasks.media import model_names
from .common import for_kind, output_dir, print_json, refuse_bidirectional
from .generate import decoding, decoding_arguments


def register(sub):
    p = sub.add_parser("eval", help="perplexity of a causal LM on a text file, masked-LM perplexity and accuracy "
                       "of an encoder, BLEU/chrF/ROUGE of a seq2seq model on a pairs file, accuracy, macro F1 "
                       "and confusion matrix of an image/audio/video classifier on a labelled set, or a graph "
                       "network's node accuracy on each split of an .npz graph, or a dual encoder's recall@k on image-caption "
                       "pairs (or its zero-shot accuracy on a labelled image set)")
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True, help="text file or folder; for seq2seq a .tsv or .jsonl pairs file; for "
                   "a classifier a folder with one subfolder per class, or an .npz with x and y; for a graph "
                   "network an .npz graph with masks; for a dual encoder a pairs .jsonl (or folder holding "
                   "pairs.jsonl), or a labelled image set as for a classifier")
    p.add_argument("--plot", help="classifiers: also draw the confusion matrix into this PNG file")
    p.add_argument("--batch-size", type=int, default=64, help="classifiers: inputs run at once")
    p.add_argument("--template", action="append", help="dual encoders on a labelled set: a prompt with {} for the "
                   "class name; repeat it to average several (default: the bare name)")
    p.add_argument("--stride", type=int, help="window step in tokens (default: half the context)")
    p.add_argument("--max-new-tokens", type=int, help="seq2seq: longest output (default: what the model allows, <= 256)")
    decoding_arguments(p)
    p.set_defaults(run=evaluate)


def evaluate(args):
    if args.stride is not None and args.stride < 1:
        raise UserError(f"--stride must be a positive number of tokens, got {args.stride}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be a positive integer, got {args.batch_size}")
    run, path = for_kind("eval", args.checkpoint, {CAUSAL_LM: lm_perplexity, SEQ2SEQ: text_scores,
                                                  ENCODER: masked_lm_perplexity, CLASSIFIER: media_scores,
                                                  GRAPH: graph_accuracy, DUAL_ENCODER: dual_scores})
    model, processor = load_checkpoint(path)
    if processor is None:
        raise UserError(f"{args.checkpoint} has no saved processor (tokenizer.json, processor.json or "
                        "graph_processor.json); eval needs it")
    print_json(run(args, model, processor))


def lm_perplexity(args, model, tokenizer) -> dict:
    refuse_bidirectional("eval", args.checkpoint, model)
    return perplexity(model, tokenizer, read_text(args.data), stride=args.stride)


def masked_lm_perplexity(args, model, tokenizer) -> dict:
    return masked_lm_scores(model, tokenizer, read_text(args.data))


def graph_accuracy(args, model, processor) -> dict:
    return node_scores(model, processor, read_graph(args.data), args.data)


def text_scores(args, model, tokenizers) -> dict:
    strategy = decoding(args, model)
    numbered = read_pairs(args.data)
    for line, source, _ in numbered:  # a source too long for the model is an error that names its line
        check_length(encode_source(tokenizers, source, model.config.eos_id), model.config.max_seq_len, "source",
                     f"{args.data} line {line}", "shorten or split it")
    outputs = translate(model, tokenizers, [source for _, source, _ in numbered], strategy, quiet=False)
    return text_metrics([row[0][0] for row in outputs], [target for _, _, target in numbered])


def dual_scores(args, model, processor) -> dict:
    """Recall@1 and @5 both ways on image-caption pairs; on a labelled image set, zero-shot
    accuracy and F1 from its class names (as `classify --template`)."""
    if is_pairs(args.data):
        return pair_scores(model, processor, read_pairs_file(args.data, processor.image), args.batch_size)
    data = read_labelled_media(args.data, processor.image)
    probabilities = zero_shot_probabilities(model, processor, data.items, data.names, args.template or ["{}"])
    metrics = classification_metrics(probabilities.argmax(-1).tolist(), data.labels.tolist(), data.names)
    print(format_confusion(metrics), file=sys.stderr)
    return metrics


def media_scores(args, model, processor) -> dict:
    """Accuracy, macro F1, per-class F1 and the confusion matrix (also as text on stderr, and as a
    PNG with --plot) of a classifier on a labelled folder or .npz."""
    plot = output_dir(args.plot) if args.plot else None
    if plot is not None and plot.suffix.lower() != ".png":
        raise UserError(f"--plot {plot} must end in .png")
    names = model_names(model)
    data = read_labelled_media(args.data, processor, names)
    predicted = predict_media(model, processor, data.items, args.batch_size).argmax(-1).tolist()
    metrics = classification_metrics(predicted, data.labels.tolist(), names)
    print(format_confusion(metrics), file=sys.stderr)
    if plot is not None:
        plot_confusion(metrics, plot)
    return metrics
