"""Autoregressive generation for causal LMs: greedy or sampled (temperature, top-k, top-p),
stop tokens and stop strings, batches of prompts of different lengths (left padded), streamed
step by step.

Every causal model decodes through its own decode state (`model.init_state`: a KV cache, a
recurrent memory, or none, which re-reads the window): each step feeds one token per row.
`use_cache=False` re-reads the whole window every step instead. Both give the same tokens.
`compile=True` runs the single-token step through `torch.compile` over a decode state of fixed
shapes (`model.init_static_state`, sized to a power-of-two bucket so that prompts of other lengths
reuse the compiled graph); families without one decode eagerly. Greedy tokens are the same.
"""

import dataclasses
import functools

import torch

from ..errors import UserError
from ..layers import DecodeState, RecomputeState


@dataclasses.dataclass
class Sampling:
    max_new_tokens: int = 100
    temperature: float = 1.0  # 0 means greedy
    top_k: int = None
    top_p: float = None
    seed: int = None
    use_cache: bool = True
    compile: bool = False  # a compiled single-token step (see the module docstring)

    def __post_init__(self):
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 0:
            raise UserError(f"max_new_tokens must be a non-negative integer, got {self.max_new_tokens!r}")
        if self.temperature < 0:
            raise UserError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise UserError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")


def next_token(logits, sampling: Sampling, generator=None):
    """logits (B, V) -> token ids (B,)."""
    if sampling.temperature == 0:
        return logits.argmax(dim=-1)
    return sample(warped_probabilities(logits, sampling), generator)


def sample(probs: torch.Tensor, generator=None) -> torch.Tensor:
    """probs (B, V), non-negative, each row with some mass -> one index per row (B,), drawn in
    proportion: where a uniform draw falls in the row's cumulative distribution (in float64). A
    token of probability 0 is never drawn. Same law as torch.multinomial, which took 25x as long
    at GPT-2's vocabulary on a CPU (benchmarks/bench_sampling.py)."""
    cumulative = probs.double().cumsum(-1)  # (B, V)
    u = torch.rand(len(probs), 1, generator=generator, dtype=torch.float64, device=probs.device)
    picked = torch.searchsorted(cumulative, u * cumulative[:, -1:], right=True)  # first index past the draw
    return picked.squeeze(-1).clamp(max=probs.size(-1) - 1)


def warped_probabilities(logits, sampling: Sampling) -> torch.Tensor:
    """logits (..., V) -> the probabilities (..., V, float64) that sampling draws from: temperature,
    then top-k, then top-p; greedy (temperature 0) puts all the mass on the argmax."""
    if sampling.temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(dim=-1), logits.size(-1)).double()
    # in float64, where any positive temperature is non-zero; the best logit becomes 0, so a tiny temperature
    # sends the others to -inf, never to inf (inf - inf = NaN)
    logits = logits.double()
    logits = (logits - logits.amax(-1, keepdim=True)) / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < logits.size(-1):
        kth = logits.topk(sampling.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p is not None and sampling.top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= sampling.top_p  # mass before this token
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(dim=-1)


def left_pad(prompts, pad_id=0, device="cpu"):
    """List of id lists -> (input_ids (B, T), attention_mask (B, T)), padded on the left."""
    longest = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), longest), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, longest - len(prompt):] = torch.tensor(prompt)
            mask[row, longest - len(prompt):] = 1
    return ids.to(device), mask.to(device)


def _decode_step(model, ids, state):
    """ids (B, 1) -> logits (B, V) of the next token, the state taking the token in."""
    return model(ids, state=state, only_last=True).logits[:, -1]


@functools.cache
def compiled_decode_step():
    """`_decode_step` compiled once per process: it recompiles only for another model, batch or bucket
    (past torch._dynamo's recompile limit, further ones run eagerly)."""
    return torch.compile(_decode_step, dynamic=False)


def bucket(tokens: int, limit: int, smallest: int = 64) -> int:
    """The power-of-two multiple of `smallest` that holds `tokens`, at most `limit`."""
    size = smallest
    while size < tokens:
        size *= 2
    return min(size, limit)


class CausalSteps:
    """A causal LM continuing left-padded prompts, one new token per row per call, through its
    decode state. `copies` rows per prompt (the beams of beam search). Past a non-recurrent
    state's context window the state restarts on the last window of tokens, since the positions
    of what it holds no longer hold; a recurrent state never needs to. `compile`: single-token
    steps go through the compiled step over the model's static state, where it has one."""

    def __init__(self, model, prompts, use_cache: bool, max_new_tokens: int, copies: int = 1, compile: bool = False):
        if not prompts or any(len(p) == 0 for p in prompts):
            raise UserError("every prompt needs at least one token")
        self.model, self.use_cache, self.max_seq_len = model, use_cache, model.config.max_seq_len
        self.device = next(model.parameters()).device
        self.prompt_ids, self.prompt_mask = left_pad(prompts, device=self.device)  # (B, P)
        self.capacity = min(self.max_seq_len, self.prompt_ids.size(1) + max_new_tokens)
        self.static = compile and use_cache and model.init_static_state(1, 1) is not None
        if self.static:  # one graph for every prompt length in the bucket
            self.capacity = bucket(self.prompt_ids.size(1) + max_new_tokens, self.max_seq_len)
        self.copies = torch.arange(len(prompts), device=self.device).repeat_interleave(copies)  # row -> prompt
        self.state = self._fresh(len(prompts))
        if not self.state.recurrent and self.prompt_ids.size(1) > self.max_seq_len:
            raise UserError(f"prompt of {self.prompt_ids.size(1)} tokens exceeds the model's context window of "
                            f"{self.max_seq_len} tokens")

    def _fresh(self, rows: int) -> DecodeState:
        if self.static:
            return self.model.init_static_state(rows, self.capacity)
        return self.model.init_state(rows, self.capacity) if self.use_cache else RecomputeState(rows, self.device)

    def _run(self, ids, mask):
        if self.static and ids.size(1) == 1 and mask is None:
            ids = ids.clone(memory_format=torch.contiguous_format)  # a slice's strides would change the graph
            return compiled_decode_step()(self.model, ids, self.state)
        return self.model(ids, attention_mask=mask, state=self.state, only_last=True).logits[:, -1]

    def next_logits(self, generated: torch.Tensor) -> torch.Tensor:
        """generated (N, T): the tokens chosen so far for each row -> logits (N, V) of the next."""
        if generated.size(1) == 0:  # prefill each prompt once, then copy its state to its rows
            logits = self._run(self.prompt_ids, self.prompt_mask)
            self.state.select(self.copies)
            return logits[self.copies]
        if not self.state.recurrent and self.state.length + 1 > self.max_seq_len:
            self.state = self._fresh(len(generated))
            ids = torch.cat([self.prompt_ids[self.copies], generated], dim=1)[:, -self.max_seq_len:]
            mask = torch.cat([self.prompt_mask[self.copies], torch.ones_like(generated)], dim=1)[:, -self.max_seq_len:]
            return self._run(ids, mask)
        return self._run(generated[:, -1:], None)

    def reorder(self, rows: torch.Tensor):
        """Rows move among the copies of one prompt (beams), so only the state follows them."""
        self.state.select(rows)


@torch.no_grad()
def stream_tokens(model, prompts, sampling: Sampling, eos_id=None):
    """Yield (B,) tensors of new token ids, one per step, until every row has stopped (eos)
    or max_new_tokens is reached. Rows that have stopped keep producing eos_id.

    Past the context window a model without a recurrent state sees the last max_seq_len tokens
    (a sliding window).
    """
    steps = CausalSteps(model, prompts, sampling.use_cache, sampling.max_new_tokens, compile=sampling.compile)
    generator = None
    if sampling.seed is not None:
        generator = torch.Generator(device=steps.device).manual_seed(sampling.seed)
    generated = steps.prompt_ids.new_zeros(len(prompts), 0)
    finished = torch.zeros(len(prompts), dtype=torch.bool, device=steps.device)
    for _ in range(sampling.max_new_tokens):
        token = next_token(steps.next_logits(generated), sampling, generator)
        if eos_id is not None:
            token = token.masked_fill(finished, eos_id)
            finished |= token == eos_id
        yield token
        if bool(finished.all()):
            return
        generated = torch.cat([generated, token[:, None]], dim=1)


def generate(model, prompts, sampling: Sampling, eos_id=None):
    """-> list of new-token id lists, one per prompt, without the eos token."""
    rows = [[] for _ in prompts]
    done = [False] * len(prompts)
    for token in stream_tokens(model, prompts, sampling, eos_id):
        for row, tok in enumerate(token.tolist()):
            if done[row] or tok == eos_id:
                done[row] = True
                continue
            rows[row].append(tok)
    return rows


def stream_text(model, tokenizer, prompts, sampling: Sampling, stop=()):
    """Yield lists of text pieces (one per prompt, '' when a row has nothing new) as tokens
    arrive. A row ends at eos or at the first stop string, which is not included."""
    encoded = [tokenizer.encode(p) for p in prompts]
    generated = [[] for _ in prompts]
    emitted = [""] * len(prompts)
    done = [False] * len(prompts)
    for token in stream_tokens(model, encoded, sampling, tokenizer.eos_id):
        pieces = []
        for row, tok in enumerate(token.tolist()):
            if done[row] or tok == tokenizer.eos_id:
                done[row] = True
                pieces.append("")
                continue
            generated[row].append(tok)
            text = tokenizer.decode(generated[row])
            text, hit_stop = cut_at_stop(text, stop)
            done[row] = hit_stop
            ready = text if hit_stop else emittable_prefix(text, stop)
            pieces.append(ready[len(emitted[row]):])
            emitted[row] = ready
        yield pieces
        if all(done):
            return
    final = [tokenizer.decode(g) for g in generated]
    tails = [cut_at_stop(text, stop)[0][len(emitted[row]):] if not done[row] else "" for row, text in enumerate(final)]
    if any(tails):
        yield tails


def generate_text(model, tokenizer, prompts, sampling: Sampling, stop=()):
    """-> list of completions (text after each prompt)."""
    outputs = [""] * len(prompts)
    for pieces in stream_text(model, tokenizer, prompts, sampling, stop):
        outputs = [out + piece for out, piece in zip(outputs, pieces)]
    return outputs


def cut_at_stop(text, stop):
    positions = [text.find(s) for s in stop if s and s in text]
    return (text[:min(positions)], True) if positions else (text, False)


def emittable_prefix(text, stop):
    """The part of `text` that is safe to emit: no partial UTF-8 character at the end and
    no tail that could still grow into a stop string."""
    text = text.rstrip("\ufffd")
    hold = 0
    for s in stop:
        for size in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:size]):
                hold = max(hold, size)
                break
    return text[:len(text) - hold]
