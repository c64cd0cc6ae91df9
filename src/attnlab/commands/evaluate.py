"""eval: perplexity of a causal LM, masked-LM perplexity and accuracy of an encoder,
BLEU/chrF/ROUGE of an encoder-decoder, or the node accuracy of a graph network. (The module is not eval.py, which would shadow a builtin.)"""

from ..checkpoint import load_checkpoint
from ..data.corpus import read_text
from ..data.graph import read_graph
from ..data.seq2seq import check_length, encode_source, read_pairs
from ..errors import UserError
from ..evaluation import masked_lm_scores, perplexity, text_metrics
from ..evaluation.graph import node_scores
from ..inference.seq2seq import translate
from ..models.base import CAUSAL_LM, ENCODER, GRAPH, SEQ2SEQ
from .common import for_kind, print_json, refuse_bidirectional
from .generate import decoding, decoding_arguments


def register(sub):
    p = sub.add_parser("eval", help="perplexity of a causal LM on a text file, masked-LM perplexity and accuracy "
                       "of an encoder, BLEU/chrF/ROUGE of a seq2seq model on a pairs file, or a graph network's node "
                       "accuracy on each split of an .npz graph")
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True, help="text file or folder; for seq2seq a .tsv or .jsonl pairs file; for a graph "
                   "network an .npz graph with masks")
    p.add_argument("--stride", type=int, help="window step in tokens (default: half the context)")
    p.add_argument("--max-new-tokens", type=int, help="seq2seq: longest output (default: what the model allows, <= 256)")
    decoding_arguments(p)
    p.set_defaults(run=evaluate)


def evaluate(args):
    if args.stride is not None and args.stride < 1:
        raise UserError(f"--stride must be a positive number of tokens, got {args.stride}")
    run, path = for_kind("eval", args.checkpoint, {CAUSAL_LM: lm_perplexity, SEQ2SEQ: text_scores,
                                                  ENCODER: masked_lm_perplexity, GRAPH: graph_accuracy})
    model, processor = load_checkpoint(path)
    if processor is None:
        raise UserError(f"{args.checkpoint} has no processor (tokenizer.json or graph_processor.json); eval needs it")
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
    outputs = translate(model, tokenizers, [source for _, source, _ in numbered], strategy)
    return text_metrics([row[0][0] for row in outputs], [target for _, _, target in numbered])
