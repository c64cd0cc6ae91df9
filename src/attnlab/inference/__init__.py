"""Decoding: sampling and streaming for causal LMs through their decode state; greedy, sampling
and beam search (one core) for causal LMs and encoder-decoders."""

from .beam import BeamSearch, Hypothesis, causal_beam_search
from .generate import CausalSteps, Sampling, generate, generate_text, next_token, stream_text, stream_tokens
from .seq2seq import beam_search, seq2seq_generate

__all__ = ["BeamSearch", "CausalSteps", "Hypothesis", "Sampling", "beam_search", "causal_beam_search", "generate",
           "generate_text", "next_token", "seq2seq_generate", "stream_text", "stream_tokens"]
