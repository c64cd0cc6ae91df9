"""Evaluation: perplexity and bits per token / character."""

from .perplexity import perplexity

__all__ = ["perplexity"]
