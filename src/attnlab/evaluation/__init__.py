"""Evaluation: perplexity and bits per token / character; masked-LM perplexity; classification metrics
(and a confusion-matrix PNG); BLEU, chrF, ROUGE and exact match."""

from .classification import classification_metrics, format_confusion, plot_confusion
from .mlm import masked_lm_scores
from .perplexity import perplexity
from .seq2seq import text_metrics

__all__ = ["classification_metrics", "format_confusion", "masked_lm_scores", "perplexity", "plot_confusion",
           "text_metrics"]
