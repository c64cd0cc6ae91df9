"""Decoding: sampling, streaming, KV-cached generation."""

from .generate import Sampling, generate, generate_text, next_token, stream_text, stream_tokens

__all__ = ["Sampling", "generate", "generate_text", "next_token", "stream_text", "stream_tokens"]
