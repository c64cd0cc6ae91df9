"""Decoding: sampling, streaming, KV-cached generation; greedy, sampling and beam search for encoder-decoders."""

from .generate import Sampling, generate, generate_text, next_token, stream_text, stream_tokens
from .seq2seq import BeamSearch, Hypothesis, beam_search, seq2seq_generate

__all__ = ["BeamSearch", "Hypothesis", "Sampling", "beam_search", "generate", "generate_text", "next_token",
           "seq2seq_generate", "stream_text", "stream_tokens"]
