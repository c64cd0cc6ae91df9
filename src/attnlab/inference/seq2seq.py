"""Decoding for encoder-decoder models: greedy, sampling, and beam search.

The source is encoded once. The decoder runs one step per new token: with the cache it feeds
only the newest token, keeps its self-attention keys and values in a KVCache and computes the
cross-attention keys and values of the encoder output once, at the first step; without the
cache it recomputes the whole target prefix every step. Both give the same tokens.

Beam search is the shared core (beam.py) over the decoder's steps; rows move only among the
beams of one source, so the cross-attention keys and values are never copied.
"""

import torch

from ..data.seq2seq import decode_target, encode_source
from ..errors import UserError
from ..layers import KVCache
from ..progress import Progress
from .beam import BeamSearch, search, until_eos
from .generate import Sampling, next_token


def pad_sources(model, sources, device="cpu"):
    """List of id lists -> (input_ids (B, S), attention_mask (B, S)), padded on the right."""
    if not sources or any(len(s) == 0 for s in sources):
        raise UserError("every source needs at least one token")
    longest = max(len(s) for s in sources)
    model.check_source_length(longest)
    ids = torch.full((len(sources), longest), model.config.pad_id, dtype=torch.long)
    mask = torch.zeros((len(sources), longest), dtype=torch.long)
    for row, source in enumerate(sources):
        ids[row, :len(source)] = torch.tensor(source)
        mask[row, :len(source)] = 1
    return ids.to(device), mask.to(device)


class DecoderSteps:
    """The decoder over a fixed encoder output, one new token per call."""

    def __init__(self, model, memory, memory_mask, use_cache: bool, capacity: int):
        self.model, self.memory = model, memory
        self.memory_mask = None if bool(memory_mask.all()) else memory_mask  # no padding: no mask to apply
        self.cache = KVCache(model.n_decoder_layer, capacity) if use_cache else None

    def next_logits(self, generated):
        """generated (N, T): the tokens chosen so far -> logits (N, V) for the position after
        them (the decoder reads them after its start token)."""
        start = generated.new_full((generated.size(0), 1), self.model.config.decoder_start_id)
        sequences = torch.cat([start, generated], dim=1)
        if self.cache is None:
            return self.model.decode(sequences, self.memory, self.memory_mask)[:, -1]
        new = sequences[:, self.cache.length:]
        return self.model.decode(new, self.memory, self.memory_mask, cache=self.cache)[:, -1]

    def reorder(self, rows):
        """Rows move among the beams of one source, whose encoder outputs are the same: only the
        self-attention cache follows them."""
        if self.cache is not None:
            self.cache.select(rows)


def _check_length(model, max_new_tokens):
    limit = model.config.max_target_len
    if max_new_tokens + 1 > limit:
        raise UserError(f"max_new_tokens={max_new_tokens} is more than this model can produce ({limit - 1})")


@torch.inference_mode()
def seq2seq_generate(model, sources, sampling: Sampling, stop_at_eos: bool = True) -> list:
    """Greedy (temperature 0) or sampled decoding -> one list of new ids per source, without eos."""
    _check_length(model, sampling.max_new_tokens)
    c = model.config
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(sampling.seed) if sampling.seed is not None else None
    ids, mask = pad_sources(model, sources, device)
    steps = DecoderSteps(model, model.encode(ids, mask), mask, sampling.use_cache, sampling.max_new_tokens + 1)
    generated = torch.zeros((len(sources), 0), dtype=torch.long, device=device)
    finished = torch.zeros(len(sources), dtype=torch.bool, device=device)
    for _ in range(sampling.max_new_tokens):
        token = next_token(steps.next_logits(generated), sampling, generator)
        token = token.masked_fill(finished, c.pad_id)
        generated = torch.cat([generated, token[:, None]], dim=1)
        if stop_at_eos:
            finished |= token == c.eos_id
            if bool(finished.all()):
                break
    return [until_eos(row, c.eos_id if stop_at_eos else None) for row in generated.tolist()]


@torch.inference_mode()
def beam_search(model, sources, options: BeamSearch, stop_at_eos: bool = True) -> list:
    """-> for each source, its `num_return` best finished Hypothesis records, best first."""
    _check_length(model, options.max_new_tokens)
    device = next(model.parameters()).device
    ids, mask = pad_sources(model, sources, device)
    memory = model.encode(ids, mask)  # (B, S, C): cross-attention shares it among the K beams of a source
    steps = DecoderSteps(model, memory, mask, options.use_cache, options.max_new_tokens + 1)
    return search(steps, ids.size(0), options, model.config.eos_id if stop_at_eos else None, device)


def translate(model, tokenizers, texts, decoding, batch_size: int = 32, quiet: bool = True) -> list:
    """Texts -> for each, a list of (text, score) outputs, best first. `decoding` is a Sampling
    (greedy or sampled: one output, score None) or a BeamSearch (its num_return outputs). The
    texts done show on stderr (attnlab.progress) unless `quiet`."""
    c = model.config
    special = {c.pad_id, c.eos_id, c.decoder_start_id}
    outputs = []
    with Progress(len(texts), "text", "decoding", quiet) as bar:
        for start in range(0, len(texts), batch_size):
            sources = [encode_source(tokenizers, text, c.eos_id) for text in texts[start:start + batch_size]]
            if isinstance(decoding, BeamSearch):
                results = [[(h.tokens, h.score) for h in hyps] for hyps in beam_search(model, sources, decoding)]
            else:
                results = [[(tokens, None)] for tokens in seq2seq_generate(model, sources, decoding)]
            outputs += [[(decode_target(tokenizers, tokens, special), score) for tokens, score in row]
                        for row in results]
            bar.update(len(sources))
    return outputs
