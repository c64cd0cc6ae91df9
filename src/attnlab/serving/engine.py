"""Continuous batching for causal LMs.

Requests wait in a bounded queue. Between decoding steps the engine admits waiting sequences
into the running batch (each prompt is prefilled on its own decode state, `model.init_state(1,
...)`, which then joins the batch's state: `extend`) and drops the sequences that have finished,
been cancelled or run out of time (`select`). Every row keeps its own sampling settings, random
generator and stopping rule.

Rows are right-aligned in one state (layers/decode_state.py): row i's tokens fill the last n_i
of the L columns and the columns before them are padding hidden by the state's mask. Positions
count each row's own tokens, so a row sees exactly what it would see alone and greedy decoding
gives the same tokens batched or not. The engine never looks inside the state, so a KV cache,
Transformer-XL's memory and the Reformer's re-read window serve alike.
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
        self.max_seq_len = model.config.max_seq_len
        self.recurrent = model.init_state(1, 1).recurrent  # fixed-size state: no context limit on generation
        self.waiting = collections.deque()
        self.cond = threading.Condition()
        self.stopping = False
        self.rows = []  # running sequences, one per batch row
        self.state, self.last = None, None  # the batch's decode state, (B,) next inputs
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
                state, first = self._prefill(seq)
            except Exception:
                log.exception("prefill failed for one request")
                seq.finish("error")
                continue
            if not seq.accept(first):
                self._join(seq, state, first)  # a failure here fails the batch (see _loop)

    @torch.no_grad()
    def _prefill(self, seq):
        ids = torch.tensor([seq.prompt_ids], device=self.device)  # (1, T)
        state = self.model.init_state(1, min(self.max_seq_len, len(seq.prompt_ids) + seq.sampling.max_new_tokens))
        logits = self.model(ids, state=state, only_last=True).logits[:, -1]
        return state, seq.sample(logits)

    def _join(self, seq, state, first):
        last = torch.tensor([first], device=self.device)
        self.rows.append(seq)
        if len(self.rows) == 1:
            self.state, self.last = state, last
        else:
            self.state.extend(state)
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
        self.state.trim()  # the batch never holds more columns than its longest row
        logits = self.model(self.last[:, None], state=self.state, only_last=True).logits[:, -1]
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

    def _remove(self, indices):
        if not indices:
            return
        keep = [i for i in range(len(self.rows)) if i not in set(indices)]
        self.rows = [self.rows[i] for i in keep]
        if not self.rows:
            self.state, self.last = None, None
            return
        index = torch.tensor(keep, device=self.device)
        self.state.select(index)
        self.last = self.last[index]

    def _reset(self, reason):
        """End every running sequence and empty the batch."""
        for seq in self.rows:
            if seq.finish_reason is None:
                seq.finish(reason)
        self.rows, self.state, self.last = [], None, None
