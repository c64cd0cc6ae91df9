"""Autoregressive generation for causal LMs: greedy or sampled (temperature, top-k, top-p),
stop tokens and stop strings, batches of prompts of different lengths (left padded), with or
without a KV cache, streamed step by step.

With the cache each step feeds one token per row; without it each step recomputes the whole
sequence. Both give the same tokens.
"""

import dataclasses

import torch

from ..errors import UserError
from ..layers import KVCache, positions_from_mask


@dataclasses.dataclass
class Sampling:
    max_new_tokens: int = 100
    temperature: float = 1.0  # 0 means greedy
    top_k: int = None
    top_p: float = None
    seed: int = None
    use_cache: bool = True

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
    logits = logits.float() / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < logits.size(-1):
        kth = logits.topk(sampling.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p is not None and sampling.top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= sampling.top_p  # mass before this token
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


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


@torch.no_grad()
def stream_tokens(model, prompts, sampling: Sampling, eos_id=None):
    """Yield (B,) tensors of new token ids, one per step, until every row has stopped (eos)
    or max_new_tokens is reached. Rows that have stopped keep producing eos_id.

    Past the context window the model sees the last block_size tokens (a sliding window);
    the cache is dropped there, since cached keys carry positions that no longer hold.
    """
    block_size = model.config.block_size
    if not prompts or any(len(p) == 0 for p in prompts):
        raise UserError("every prompt needs at least one token")
    longest = max(len(p) for p in prompts)
    if longest > block_size:
        raise UserError(f"prompt of {longest} tokens exceeds the model's context window of {block_size} tokens")
    device = next(model.parameters()).device
    generator = None
    if sampling.seed is not None:
        generator = torch.Generator(device=device).manual_seed(sampling.seed)
    ids, mask = left_pad(prompts, device=device)
    cache = None
    if sampling.use_cache and getattr(model, "supports_kv_cache", True):  # else recompute the window
        cache = KVCache(len(model.blocks), capacity=min(block_size, longest + sampling.max_new_tokens))
    finished = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    step_input = ids
    for _ in range(sampling.max_new_tokens):
        if cache is not None and cache.length + step_input.size(1) > block_size:
            cache = None
        if cache is None:
            step_input, step_mask = ids[:, -block_size:], mask[:, -block_size:]
        else:
            step_mask = mask
        positions = positions_from_mask(step_mask, step_input.size(1))  # left padding shifts no prompt
        logits = model(step_input, attention_mask=step_mask, position_ids=positions, cache=cache,
                       only_last=True).logits[:, -1]
        token = next_token(logits, sampling, generator)
        if eos_id is not None:
            token = token.masked_fill(finished, eos_id)
            finished |= token == eos_id
        yield token
        if bool(finished.all()):
            return
        ids = torch.cat([ids, token[:, None]], dim=1)
        mask = torch.cat([mask, mask.new_ones(len(prompts), 1)], dim=1)
        step_input = token[:, None]


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
