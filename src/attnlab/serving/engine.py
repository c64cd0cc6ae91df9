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

`SpeculativeEngine` decodes the same batch speculatively (inference/speculative.py): each step a
drafter proposes up to k tokens per row, the model checks them all in one pass, and every row keeps
what it accepts, drawn with its own settings and generator, so one step emits 1 to k + 1 tokens per
row and the output is distributed exactly as without speculation.
"""

import collections
import dataclasses
import logging
import threading
import time

import torch

from ..errors import UserError
from ..inference import Sampling, next_token
from ..inference.generate import cut_at_stop, emittable_prefix
from ..inference.speculative import DraftLength, accept_rows, emitted, round_counts, row_groups

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

    def _drop_interrupted(self) -> bool:
        """End the rows cancelled or out of time; True when rows remain."""
        stopped = [(i, seq.interrupted()) for i, seq in enumerate(self.rows)]
        stopped = [(i, reason) for i, reason in stopped if reason]
        for i, reason in stopped:
            self.rows[i].finish(reason)
        self._remove([i for i, _ in stopped])
        return bool(self.rows)

    @torch.no_grad()
    def _decode(self):
        """One step for every row: drop interrupted rows, feed each row's last token, sample."""
        if not self._drop_interrupted():
            return
        self.state.trim()  # the batch never holds more columns than its longest row
        logits = self.model(self.last[:, None], state=self.state, only_last=True).logits[:, -1]
        self._advance(lambda i, seq: [seq.sample(logits[i:i + 1])])

    def _advance(self, new_tokens):
        """new_tokens(row index, sequence) -> the row's new tokens. Each row takes them until it is
        done; the last becomes its next input and the finished rows leave the batch."""
        last, done = [], []
        for i, seq in enumerate(self.rows):
            try:
                tokens = new_tokens(i, seq)
                finished = any(seq.accept(token) for token in tokens)  # stops at the first that ends it
            except Exception:
                log.exception("sampling failed for one request")
                seq.finish("error")
                tokens, finished = [0], True
            last.append(tokens[-1])
            if finished:
                done.append(i)
        self.last = torch.tensor(last, device=self.device)
        self._remove(done)
        self.steps += 1

    def _remove(self, indices):
        if not indices:
            return
        keep = [i for i in range(len(self.rows)) if i not in set(indices)]
        self.rows = [self.rows[i] for i in keep]
        if not self.rows:
            return self._clear()
        self._select(torch.tensor(keep, device=self.device))

    def _select(self, index: torch.Tensor):
        self.state.select(index)
        self.last = self.last[index]

    def _clear(self):
        self.rows, self.state, self.last = [], None, None

    def _reset(self, reason):
        """End every running sequence and empty the batch."""
        for seq in self.rows:
            if seq.finish_reason is None:
                seq.finish(reason)
        self._clear()


class SpeculativeEngine(Engine):
    """The engine with speculative decoding: `drafter` (a ModelDrafter or a LookupDrafter) proposes
    `draft_tokens` per row and step (an int, "auto", or None for the drafter's default:
    `DraftLength`). Every row keeps what it accepted, so the model's and the draft model's states
    must forget columns row by row (a KV cache or a re-read window; a memory cannot), and the draft
    model must see as far as the model."""

    def __init__(self, model, drafter, draft_tokens=None, config: EngineConfig = None):
        super().__init__(model, config)
        self.drafter, self.length = drafter, DraftLength(draft_tokens, free=drafter.free)
        family = model.config.family
        if not (model.init_state(1, 1).truncatable and drafter.truncatable):
            raise UserError(f"speculative serving needs decode states that can forget drafted tokens row by row (a "
                            f"KV cache); the {family} model or its draft keeps a memory: serve it without a drafter")
        if drafter.window < self.max_seq_len:
            raise UserError(f"the draft model's context ({drafter.window} tokens) is shorter than the model's "
                            f"({self.max_seq_len}); a draft must see as far as the model it drafts for")

    def _join(self, seq, state, first):
        super()._join(seq, state, first)
        self.drafter.join(seq.prompt_ids, seq.sampling.max_new_tokens + self.length.most + 1)

    def _select(self, index: torch.Tensor):
        super()._select(index)
        self.drafter.select(index)

    def _clear(self):
        super()._clear()
        self.drafter.clear()

    @torch.no_grad()
    def _decode(self):
        """One round for every row: draft, check in one pass, keep each row's accepted tokens."""
        if not self._drop_interrupted():
            return
        started = time.perf_counter()
        self.state.trim()
        self.drafter.trim()  # the two states hold the same columns
        k = min(self.length.k, self.max_seq_len - self.state.length - 1)  # a running row has room for 2
        groups = row_groups(self.rows)  # every request draws with its own settings and generator
        histories = [seq.prompt_ids + seq.generated for seq in self.rows]
        drafted, q = self.drafter.propose(self.last, histories, groups, k)  # (B, k'), (B, k', V) or None
        start = self.state.length
        logits = self.model(torch.cat([self.last[:, None], drafted], dim=1), state=self.state).logits
        accepted, bonus = accept_rows(logits.float().cpu(), None if q is None else q.cpu(), drafted.cpu(), groups)
        counts = round_counts(accepted, self.length.lockstep(self.state.padded or self.drafter.padded))
        self.state.truncate(start + counts.to(self.device))
        self.drafter.rewind(counts.to(self.device))
        self.length.update(int(accepted.sum()), drafted.numel(), int(counts.sum()), time.perf_counter() - started)
        rows = emitted(drafted.cpu(), bonus, accepted, counts)
        self._advance(lambda i, seq: rows[i])
