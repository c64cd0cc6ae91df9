"""Continuous batching for causal LMs.

Requests wait in a bounded queue. Between decoding steps the engine admits waiting sequences
into the running batch (each prompt is prefilled on its own, then its keys and values join the
batch's cache) and drops the sequences that have finished, been cancelled or run out of time.
Every row keeps its own sampling settings, random generator and stopping rule.

Rows are right-aligned in one cache: row i's tokens fill the last n_i of the L columns and the
columns before them are padding hidden by the attention mask. Positions count each row's own
tokens (`layers.positions_from_mask`, which GPT applies), so a row sees exactly what it would see alone and
greedy decoding gives the same tokens batched or not.
"""

import collections
import dataclasses
import logging
import threading
import time

import torch

from ..inference import Sampling, next_token
from ..inference.generate import cut_at_stop, emittable_prefix

log = logging.getLogger("attnlab.serving")


@dataclasses.dataclass
class EngineConfig:
    max_batch: int = 16  # sequences decoded together
    max_queue: int = 64  # sequences waiting to join the batch; more are refused (HTTP 429)
    timeout_s: float = 60.0  # per request, time in the queue included


class QueueFull(Exception):
    """The waiting queue cannot take the request; the client should retry later."""


class RowCache:
    """The KVCache interface (`append`, `length`) over per-layer buffers (B, H, capacity, D)
    whose rows can be right-aligned to a new length, selected and concatenated."""

    def __init__(self, n_layer: int, capacity: int):
        self.n_layer, self.capacity = n_layer, capacity
        self.keys, self.values = [None] * n_layer, [None] * n_layer
        self.length = 0  # columns in use (B, H, :length, D)

    def append(self, layer, k, v):
        """Write (B, H, T_new, D) after the used columns; return all used columns."""
        start, end = self.length, self.length + k.size(2)
        if self.keys[layer] is None:
            b, h, _, d = k.shape
            self.keys[layer] = k.new_zeros(b, h, self.capacity, d)
            self.values[layer] = v.new_zeros(b, h, self.capacity, v.size(-1))
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        if layer == self.n_layer - 1:
            self.length = end
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def realign(self, length: int):
        """Right-align the used columns to `length`: pad on the left when growing, drop leading
        columns (which must be padding in every row) when shrinking."""
        keep = min(self.length, length)
        for buffers in (self.keys, self.values):
            for i, old in enumerate(buffers):
                new = torch.zeros_like(old)
                new[:, :, length - keep:length] = old[:, :, self.length - keep:self.length]
                buffers[i] = new
        self.length = length

    def select(self, rows: torch.Tensor):
        self.keys = [t.index_select(0, rows) for t in self.keys]
        self.values = [t.index_select(0, rows) for t in self.values]

    def extend(self, other: "RowCache"):
        """Append the rows of `other` (same length) below these rows."""
        self.keys = [torch.cat(pair) for pair in zip(self.keys, other.keys)]
        self.values = [torch.cat(pair) for pair in zip(self.values, other.values)]


def right_align(mask: torch.Tensor, length: int) -> torch.Tensor:
    """(B, L) attention mask -> (B, length), content kept at the right, zeros on the left."""
    keep = min(mask.size(1), length)
    out = mask.new_zeros(mask.size(0), length)
    out[:, length - keep:] = mask[:, mask.size(1) - keep:]
    return out


class Sequence:
    """One completion being generated. `emit` receives ("text", piece) as text becomes safe to
    send and finally ("done", finish_reason, completion_tokens); it is called from the engine
    thread."""

    def __init__(self, prompt_ids, sampling: Sampling, tokenizer, emit, stop=(), deadline=None):
        self.prompt_ids, self.sampling, self.tokenizer = list(prompt_ids), sampling, tokenizer
        self.emit, self.stop, self.deadline = emit, tuple(stop), deadline
        self.generator = torch.Generator().manual_seed(sampling.seed) if sampling.seed is not None else None
        self.generated = []
        self.emitted = ""
        self.cancelled = False
        self.finish_reason = None

    def cancel(self):
        """Called from any thread; the engine drops the sequence at the next step boundary."""
        self.cancelled = True

    def interrupted(self):
        """'cancelled' or 'timeout' when the sequence must stop before its own rule says so."""
        if self.cancelled:
            return "cancelled"
        if self.deadline is not None and time.monotonic() > self.deadline:
            return "timeout"
        return None

    def sample(self, logits) -> int:
        """logits (1, V) -> the next token id."""
        return int(next_token(logits.float().cpu(), self.sampling, self.generator))

    def accept(self, token: int) -> bool:
        """Record a new token and send the text it completes; True when the sequence is done."""
        if token == self.tokenizer.eos_id:
            return self.finish("stop")
        self.generated.append(token)
        text, hit_stop = cut_at_stop(self.tokenizer.decode(self.generated), self.stop)
        if hit_stop:
            return self.finish("stop", text)
        if len(self.generated) >= self.sampling.max_new_tokens:
            return self.finish("length", text)
        self._send(emittable_prefix(text, self.stop))
        return False

    def finish(self, reason, final_text=None) -> bool:
        if final_text is None:
            final_text = cut_at_stop(self.tokenizer.decode(self.generated), self.stop)[0]
        if reason in ("stop", "length"):
            self._send(final_text)
        self.finish_reason = reason
        self.emit(("done", reason, len(self.generated)))
        return True

    def _send(self, ready: str):
        piece = ready[len(self.emitted):]
        if piece:
            self.emitted = ready
            self.emit(("text", piece))


class Engine:
    """Runs the model on one background thread; `submit` is safe from any thread."""

    def __init__(self, model, config: EngineConfig = None):
        self.model, self.config = model.eval(), config or EngineConfig()
        self.device = next(model.parameters()).device
        self.block_size = model.config.block_size
        self.waiting = collections.deque()
        self.cond = threading.Condition()
        self.stopping = False
        self.rows = []  # running sequences, one per batch row
        self.cache, self.mask, self.last = None, None, None  # RowCache, (B, L) mask, (B,) next inputs
        self.steps = 0
        self.thread = threading.Thread(target=self._loop, name="attnlab-engine", daemon=True)

    # -- public --------------------------------------------------------------------------
    def start(self):
        self.thread.start()
        return self

    def submit(self, sequences):
        """Queue the sequences of one request, all or none; raises QueueFull."""
        with self.cond:
            if self.stopping:
                raise QueueFull("the server is shutting down")
            if len(self.waiting) + len(sequences) > self.config.max_queue:
                raise QueueFull(f"{len(self.waiting)} sequences are already waiting (limit {self.config.max_queue})")
            self.waiting.extend(sequences)
            self.cond.notify()

    def stop(self, timeout=None):
        """Cancel what is still queued or running and end the thread."""
        with self.cond:
            self.stopping = True
            self.cond.notify()
        if self.thread.is_alive():
            self.thread.join(timeout)

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    @property
    def running(self) -> int:
        return len(self.rows)

    # -- the loop ------------------------------------------------------------------------
    def _loop(self):
        while True:
            with self.cond:
                while not (self.stopping or self.waiting or self.rows):
                    self.cond.wait()
                if self.stopping:
                    break
            try:
                self._admit()
                if self.rows:
                    self._decode()
            except Exception:  # our bug: fail this batch, keep serving
                log.exception("decoding step failed; ending the %d sequences in the batch", len(self.rows))
                self._reset("error")
        with self.cond:
            leftover, self.waiting = list(self.waiting), collections.deque()
        for seq in leftover:
            seq.finish("cancelled")
        self._reset("cancelled")

    def _admit(self):
        while len(self.rows) < self.config.max_batch:
            with self.cond:
                if not self.waiting:
                    return
                seq = self.waiting.popleft()
            reason = seq.interrupted()
            if reason:
                seq.finish(reason)
                continue
            try:
                cache, first = self._prefill(seq)
            except Exception:
                log.exception("prefill failed for one request")
                seq.finish("error")
                continue
            if not seq.accept(first):
                self._join(seq, cache, first)  # a failure here fails the batch (see _loop)

    @torch.no_grad()
    def _prefill(self, seq):
        ids = torch.tensor([seq.prompt_ids], device=self.device)  # (1, T)
        cache = RowCache(len(self.model.blocks), self.block_size)
        logits = self.model(ids, attention_mask=torch.ones_like(ids), cache=cache, only_last=True).logits[:, -1]
        return cache, seq.sample(logits)

    def _join(self, seq, cache, first):
        mask = torch.ones(1, len(seq.prompt_ids), dtype=torch.long, device=self.device)
        last = torch.tensor([first], device=self.device)
        self.rows.append(seq)
        if len(self.rows) == 1:
            self.cache, self.mask, self.last = cache, mask, last
        else:
            length = max(self.cache.length, cache.length)
            self.cache.realign(length)
            cache.realign(length)
            self.cache.extend(cache)
            self.mask = torch.cat([right_align(self.mask, length), right_align(mask, length)])
            self.last = torch.cat([self.last, last])

    @torch.no_grad()
    def _decode(self):
        """One step for every row: drop interrupted rows, feed each row's last token, sample."""
        stopped = [(i, seq.interrupted()) for i, seq in enumerate(self.rows)]
        stopped = [(i, reason) for i, reason in stopped if reason]
        for i, reason in stopped:
            self.rows[i].finish(reason)
        self._remove([i for i, _ in stopped])
        if not self.rows:
            return
        self._compact()
        mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)  # (B, L + 1)
        logits = self.model(self.last[:, None], attention_mask=mask, cache=self.cache, only_last=True).logits[:, -1]
        self.mask = mask
        tokens, done = [], []
        for i, seq in enumerate(self.rows):
            try:
                token = seq.sample(logits[i:i + 1])
                finished = seq.accept(token)
            except Exception:
                log.exception("sampling failed for one request")
                seq.finish("error")
                token, finished = 0, True
            tokens.append(token)
            if finished:
                done.append(i)
        self.last = torch.tensor(tokens, device=self.device)
        self._remove(done)
        self.steps += 1

    def _compact(self):
        """Drop leading columns that are padding in every row, so the batch never holds more
        columns than its longest row."""
        used = self.mask.any(dim=0).nonzero()
        first = int(used[0]) if len(used) else self.mask.size(1)
        if first:
            length = self.mask.size(1) - first
            self.cache.realign(length)
            self.mask = self.mask[:, first:]

    def _remove(self, indices):
        if not indices:
            return
        keep = [i for i in range(len(self.rows)) if i not in set(indices)]
        self.rows = [self.rows[i] for i in keep]
        if not self.rows:
            self.cache, self.mask, self.last = None, None, None
            return
        index = torch.tensor(keep, device=self.device)
        self.cache.select(index)
        self.mask, self.last = self.mask[index], self.last[index]

    def _reset(self, reason):
        """End every running sequence and empty the batch."""
        for seq in self.rows:
            if seq.finish_reason is None:
                seq.finish(reason)
        self.rows, self.cache, self.mask, self.last = [], None, None, None
