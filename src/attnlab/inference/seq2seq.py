"""Decoding for encoder-decoder models: greedy, sampling, and beam search.

The source is encoded once. The decoder runs one step per new token: with the cache it feeds
only the newest token, keeps its self-attention keys and values in a KVCache and computes the
cross-attention keys and values of the encoder output once, at the first step; without the
cache it recomputes the whole target prefix every step. Both give the same tokens.

Beam search keeps `num_beams` running hypotheses per source and up to `num_beams` finished
ones, scored by sum of log-probabilities / generated_length ** length_penalty; it follows the
stopping rules of Hugging Face `generate` (early_stopping True, False or "never"), so the
same weights give the same sequences.
"""

import dataclasses

import torch

from ..data.seq2seq import decode_target, encode_source
from ..errors import UserError
from ..layers import KVCache
from .generate import Sampling, next_token

EARLY_STOPPING = (True, False, "never")


@dataclasses.dataclass
class BeamSearch:
    num_beams: int = 4
    max_new_tokens: int = 64
    length_penalty: float = 1.0  # > 0 favours longer hypotheses, < 0 shorter ones
    early_stopping: object = False  # True: stop at num_beams finished; False: when none can improve; "never"
    num_return: int = 1  # n-best: how many finished hypotheses to return per source
    use_cache: bool = True

    def __post_init__(self):
        if not isinstance(self.num_beams, int) or self.num_beams < 1:
            raise UserError(f"num_beams must be a positive integer, got {self.num_beams!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if self.early_stopping not in EARLY_STOPPING:
            raise UserError(f"early_stopping must be true, false or 'never', got {self.early_stopping!r}")
        if not 1 <= self.num_return <= self.num_beams:
            raise UserError(f"num_return must be between 1 and num_beams ({self.num_beams}), got {self.num_return}")


@dataclasses.dataclass
class Hypothesis:
    tokens: list  # generated ids, without the start token and without eos
    score: float  # sum of log-probabilities / length ** length_penalty


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

    def next_logits(self, sequences):
        """sequences (N, T) -> logits (N, V) for the position after them."""
        if self.cache is None:
            return self.model.decode(sequences, self.memory, self.memory_mask)[:, -1]
        new = sequences[:, self.cache.length:]
        return self.model.decode(new, self.memory, self.memory_mask, cache=self.cache)[:, -1]

    def reorder(self, rows):
        """Rows move among the beams of one source, whose encoder outputs are the same: only the
        self-attention cache follows them."""
        if self.cache is not None:
            self.cache.reorder(rows, cross=False)


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
    sequences = torch.full((len(sources), 1), c.decoder_start_id, dtype=torch.long, device=device)
    finished = torch.zeros(len(sources), dtype=torch.bool, device=device)
    for _ in range(sampling.max_new_tokens):
        token = next_token(steps.next_logits(sequences), sampling, generator)
        token = token.masked_fill(finished, c.pad_id)
        sequences = torch.cat([sequences, token[:, None]], dim=1)
        if stop_at_eos:
            finished |= token == c.eos_id
            if bool(finished.all()):
                break
    return [_until_eos(row[1:], c.eos_id if stop_at_eos else None) for row in sequences.tolist()]


def _until_eos(tokens, eos_id):
    return tokens[:tokens.index(eos_id)] if eos_id is not None and eos_id in tokens else tokens


def _take(x, index):
    """x (B, N, ...), index (B, M) -> (B, M, ...): per-row gather along dim 1."""
    return x[torch.arange(x.size(0), device=x.device)[:, None], index]


@torch.inference_mode()
def beam_search(model, sources, options: BeamSearch, stop_at_eos: bool = True) -> list:
    """-> for each source, its `num_return` best finished Hypothesis records, best first."""
    _check_length(model, options.max_new_tokens)
    c, k = model.config, options.num_beams
    eos = c.eos_id if stop_at_eos else None
    device = next(model.parameters()).device
    ids, mask = pad_sources(model, sources, device)
    batch = ids.size(0)
    memory = model.encode(ids, mask)  # (B, S, C): cross-attention shares it among the K beams of a source
    steps = DecoderSteps(model, memory, mask, options.use_cache, options.max_new_tokens + 1)
    total = options.max_new_tokens + 1
    # running beams: their tokens so far (start token first) and summed log-probabilities
    running = torch.full((batch, k, total), c.pad_id, dtype=torch.long, device=device)
    running[:, :, 0] = c.decoder_start_id
    running_scores = torch.full((batch, k), float("-inf"), device=device)
    running_scores[:, 0] = 0.0  # all beams start equal: expand only the first at the first step
    # finished hypotheses, best first; a slot is empty while its score is -inf
    done = torch.full((batch, k, total), c.pad_id, dtype=torch.long, device=device)
    done_scores = torch.full((batch, k), float("-inf"), device=device)
    improvable = torch.ones(batch, dtype=torch.bool, device=device)  # may a running beam still beat the worst finished?
    candidates_rank = torch.arange(2 * k, device=device)[None, :]
    for step in range(options.max_new_tokens):
        length = step + 1  # generated tokens, counting the one chosen now
        logits = steps.next_logits(running[:, :, :length].reshape(batch * k, length))
        log_probs = logits.float().log_softmax(-1).view(batch, k, -1) + running_scores[:, :, None]
        vocab = log_probs.size(-1)
        scores, flat = log_probs.view(batch, -1).topk(2 * k, dim=-1)  # (B, 2K) best continuations
        parent, token = flat // vocab, flat % vocab
        candidates = _take(running, parent)  # (B, 2K, total)
        candidates[:, :, length] = token
        ends = (token == eos) if eos is not None else torch.zeros_like(token, dtype=torch.bool)
        if length == options.max_new_tokens:
            ends = torch.ones_like(ends)
        # finished: candidates among the top K that end, while their source may still improve
        full = (done_scores > float("-inf")).all(dim=-1)
        accepting = improvable & ~(full & (options.early_stopping is True))
        finishing = ends & (candidates_rank < k) & accepting[:, None]
        normalised = (scores / length ** options.length_penalty).masked_fill(~finishing, float("-inf"))
        merged_scores, best = torch.cat([done_scores, normalised], dim=1).topk(k, dim=-1)
        done, done_scores = _take(torch.cat([done, candidates], dim=1), best), merged_scores
        # running: the best K candidates that go on
        scores = scores.masked_fill(ends, float("-inf"))
        running_scores, keep = scores.topk(k, dim=-1)
        running = _take(candidates, keep)
        rows = _take(parent, keep) + torch.arange(batch, device=device)[:, None] * k
        steps.reorder(rows.view(-1))
        # can any running beam still beat the worst finished hypothesis?
        hoped_length = options.max_new_tokens if options.early_stopping == "never" and options.length_penalty > 0 \
            else length
        best_hope = running_scores[:, 0] / hoped_length ** options.length_penalty
        full = (done_scores > float("-inf")).all(dim=-1)
        improvable &= ~(full & (best_hope <= done_scores[:, -1]))
        if not bool(improvable.any()) or (options.early_stopping is True and bool(full.all())):
            break
    return [[Hypothesis(_until_eos(done[b, j, 1:].tolist(), eos), done_scores[b, j].item())
             for j in range(options.num_return)] for b in range(batch)]


def translate(model, tokenizers, texts, decoding, batch_size: int = 32) -> list:
    """Texts -> for each, a list of (text, score) outputs, best first. `decoding` is a Sampling
    (greedy or sampled: one output, score None) or a BeamSearch (its num_return outputs)."""
    c = model.config
    special = {c.pad_id, c.eos_id, c.decoder_start_id}
    outputs = []
    for start in range(0, len(texts), batch_size):
        sources = [encode_source(tokenizers, text, c.eos_id) for text in texts[start:start + batch_size]]
        if isinstance(decoding, BeamSearch):
            results = [[(h.tokens, h.score) for h in hyps] for hyps in beam_search(model, sources, decoding)]
        else:
            results = [[(tokens, None)] for tokens in seq2seq_generate(model, sources, decoding)]
        outputs += [[(decode_target(tokenizers, tokens, special), score) for tokens, score in row] for row in results]
    return outputs
