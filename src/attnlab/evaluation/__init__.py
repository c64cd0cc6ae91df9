"""Evaluation: perplexity and bits per token / character; classification metrics; BLEU, chrF, ROUGE
and exact match."""

from .classification import classification_metrics, format_confusion
from .perplexity import perplexity
from .seq2seq import text_metrics

__all__ = ["classification_metrics", "format_confusion", "perplexity", "text_metrics"]
