"""Evaluation: perplexity and bits per token / character; classification metrics."""

from .classification import classification_metrics, format_confusion
from .perplexity import perplexity

__all__ = ["classification_metrics", "format_confusion", "perplexity"]
