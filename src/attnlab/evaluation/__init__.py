"""Evaluation: perplexity and bits per token / character; BLEU, chrF, ROUGE and exact match."""

from .perplexity import perplexity
from .seq2seq import text_metrics

__all__ = ["perplexity", "text_metrics"]
