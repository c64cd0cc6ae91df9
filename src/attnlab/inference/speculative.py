"""Speculative decoding: a cheap drafter proposes k tokens, the target model checks them all in
one forward pass, and each row keeps the longest prefix the target accepts plus one token of the
target's own, so a round emits between 1 and k + 1 tokens.

A drafted token x is kept with probability min(1, p(x) / q(x)) (p the target's distribution, q the
drafter's); at the first rejection the next token is drawn from norm(max(p - q, 0)), and when all
k are kept, from p after them. The emitted tokens are then distributed exactly as the target's
alone (Leviathan et al. 2023; Chen et al. 2023). Both distributions are warped by the same
temperature / top-k / top-p in float64; greedy decoding (temperature 0) compares one-hot
distributions, so its output is token for token the target's.

Drafters: a small causal LM with the target's tokenizer (`ModelDrafter`), or prompt lookup
(`LookupDrafter`: the tokens that followed the latest earlier occurrence of the last n-gram, with
probability one; no model at all).

A batch advances by the same number of tokens in every row: the fewest any row accepted, plus
one (the tokens a row accepted beyond that are a prefix of an exact sample, so dropping them
keeps the output exact). Every decode state then moves back by the same count, with no holes in
its history: a state with a history (KV cache, re-read window) is cut back (`truncate`); one that
cannot forget (a memory, an SSM state) is restored from a copy and re-fed.
"""

import copy
import dataclasses

import torch

from ..errors import UserError
from .generate import Sampling, left_pad, warped_probabilities


@dataclasses.dataclass
class SpeculationStats:
    rounds: int = 0
    drafted: int = 0  # tokens proposed, over rows and rounds
    accepted: int = 0  # of those, the ones the target accepted

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / max(self.drafted, 1)


def accept(p: torch.Tensor, q: torch.Tensor, drafted: torch.Tensor, generator=None) -> tuple:
    """p (B, k + 1, V): the target's probabilities at the k drafted positions and after them;
    q (B, k, V): the drafter's; drafted (B, k) -> (accepted (B,) in 0..k, next token (B,))."""
    rows, k = drafted.shape
    p_drafted = p[:, :k].gather(-1, drafted[..., None]).squeeze(-1)  # (B, k)
    q_drafted = q.gather(-1, drafted[..., None]).squeeze(-1)
    u = torch.rand(rows, k, generator=generator, dtype=p.dtype, device=p.device)
    accepted = (u * q_drafted < p_drafted).long().cumprod(-1).sum(-1)  # leading u < p / q
    residual = torch.cat([(p[:, :k] - q).clamp(min=0), p[:, k:]], dim=1)  # (B, k + 1, V)
    index = torch.arange(rows, device=p.device)
    pick, mass = residual[index, accepted], residual[index, accepted].sum(-1, keepdim=True)
    pick = torch.where(mass > 0, pick / mass.clamp(min=1e-300), p[index, accepted])  # p == q: no residual
    return accepted, torch.multinomial(pick, 1, generator=generator).squeeze(-1)


class Decoder:
    """A causal model's decode state over the rows of a batch. Each round starts with `mark`;
    `feed` runs tokens through the state; `rewind(count)` keeps only the first `count` of the
    tokens fed since the mark."""

    def __init__(self, model, histories: list, extra: int):
        self.model, self.device = model, next(model.parameters()).device
        self.window = model.config.max_seq_len
        ids, mask = left_pad(histories, device=self.device)
        self.state = model.init_state(len(histories), min(self.window, ids.size(1) + extra))
        self.recurrent, self.copies = self.state.recurrent, not self.state.truncatable
        if not self.recurrent and ids.size(1) > self.window:
            raise UserError(f"prompt of {ids.size(1)} tokens exceeds the model's context window of {self.window}")
        self.logits = model(ids, attention_mask=mask, state=self.state, only_last=True).logits[:, -1]  # (B, V)

    def mark(self):
        self.start, self.fed = self.state.length, []
        self.snapshot = copy.deepcopy(self.state) if self.copies else None

    def feed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, T) -> logits (B, T, V)."""
        self.fed.append(ids)
        return self.model(ids, state=self.state).logits

    def rewind(self, count: int):
        fed = torch.cat(self.fed, dim=1)
        if count == fed.size(1):
            return
        if self.copies:  # a memory cannot forget: redo the kept tokens from the copy
            self.state = self.snapshot
            if count:
                self.model(fed[:, :count], state=self.state)
        else:
            self.state.truncate(self.start + count)

    def room(self, tokens: int) -> bool:
        return self.recurrent or self.state.length + tokens <= self.window

    def select(self, rows: torch.Tensor):
        self.state.select(rows)


class ModelDrafter:
    """A small causal LM drafts k tokens, one step at a time, through its own decode state."""

    def __init__(self, model, k: int):
        self.model, self.k, self.window = model, k, model.config.max_seq_len

    def start(self, histories: list, extra: int):
        self.decoder = Decoder(self.model, histories, extra)

    def propose(self, last: torch.Tensor, histories: list, sampling: Sampling, generator) -> tuple:
        """last (B,): the newest token, not yet fed -> drafted (B, k), q (B, k, V)."""
        self.decoder.mark()
        tokens, probs, current = [], [], last
        for _ in range(self.k):
            q = warped_probabilities(self.decoder.feed(current[:, None])[:, -1], sampling)
            current = torch.multinomial(q, 1, generator=generator).squeeze(-1)
            tokens.append(current)
            probs.append(q)
        self.last_drafted = current
        return torch.stack(tokens, dim=1), torch.stack(probs, dim=1)

    def rewind(self, count: int):
        """Keep the first `count` of [last, drafted...] (k + 1 tokens; the last drafted one was never fed)."""
        if count == self.k + 1:
            self.decoder.feed(self.last_drafted[:, None])
        self.decoder.rewind(count)

    def room(self, tokens: int) -> bool:
        return self.decoder.room(tokens)

    def select(self, rows: torch.Tensor):
        self.decoder.select(rows)


class LookupDrafter:
    """Prompt lookup: propose the (up to k) tokens that followed the latest earlier occurrence of
    the last n tokens (n from `max_ngram` down to 1), each with probability one. A row with a shorter
    match repeats its last proposal; when no row matches, the round drafts nothing and is a plain
    decoding step, so text with nothing to copy costs (almost) nothing extra."""

    window = float("inf")

    def __init__(self, vocab_size: int, k: int, max_ngram: int = 3):
        self.vocab_size, self.k, self.max_ngram = vocab_size, k, max_ngram

    def start(self, histories: list, extra: int):
        pass

    def propose(self, last: torch.Tensor, histories: list, sampling: Sampling, generator) -> tuple:
        found = [self.continuation(tokens) for tokens in histories]
        width = max(map(len, found))  # 0: no row has anything to copy
        rows = [match or tokens[-1:] for match, tokens in zip(found, histories)]
        rows = [row + row[-1:] * (width - len(row)) for row in rows]  # each padded with its last token
        drafted = torch.tensor(rows, dtype=torch.long, device=last.device)[:, :width]  # (B, width)
        return drafted, torch.nn.functional.one_hot(drafted, self.vocab_size).double()

    def continuation(self, tokens: list) -> list:
        """What followed the latest earlier occurrence of the longest matching tail ([] if none)."""
        for n in range(min(self.max_ngram, len(tokens) - 1), 0, -1):
            tail = tokens[-n:]
            for start in range(len(tokens) - n - 1, -1, -1):
                if tokens[start:start + n] == tail:
                    return tokens[start + n:start + n + self.k]
        return []

    def rewind(self, count: int):
        pass

    def room(self, tokens: int) -> bool:
        return True

    def select(self, rows: torch.Tensor):
        pass


@torch.no_grad()
def speculative_generate(target, drafter, prompts: list, sampling: Sampling, eos_id=None) -> tuple:
    """-> (new-token id lists, one per prompt, without eos; SpeculationStats). A model drafter
    must share the target's tokenizer."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise UserError("every prompt needs at least one token")
    if sampling.max_new_tokens == 0:
        return [[] for _ in prompts], SpeculationStats()
    generator = None if sampling.seed is None else torch.Generator().manual_seed(sampling.seed)
    k, extra = drafter.k, sampling.max_new_tokens + drafter.k + 1
    window = min(target.config.max_seq_len, drafter.window)  # a restart keeps this much history, less a round
    histories = [list(p) for p in prompts]
    target_decoder = Decoder(target, histories, extra)
    drafter.start(histories, extra)
    run = Run(histories, sampling.max_new_tokens, eos_id)
    first = torch.multinomial(warped_probabilities(target_decoder.logits, sampling), 1, generator=generator)
    last = run.emit(first)
    stats = SpeculationStats()
    while len(run.alive):
        for part in (target_decoder, drafter):
            part.select(run.kept_rows)
        if not (target_decoder.room(k + 1) and drafter.room(k + 1)):  # past a window: restart from history
            consumed = [histories[i][:-1][-(window - k - 1):] for i in run.alive.tolist()]
            target_decoder = Decoder(target, consumed, extra)
            drafter.start(consumed, extra)
        drafted, q = drafter.propose(last, [histories[i] for i in run.alive.tolist()], sampling, generator)
        target_decoder.mark()
        p = warped_probabilities(target_decoder.feed(torch.cat([last[:, None], drafted], dim=1)), sampling)
        accepted, bonus = accept(p, q, drafted, generator)
        count = int(accepted.min()) + 1  # tokens every row emits this round
        stats.rounds, stats.drafted = stats.rounds + 1, stats.drafted + drafted.numel()
        stats.accepted += int(accepted.sum())
        emitted = torch.cat([drafted, bonus[:, None]], dim=1)[:, :count].clone()  # (B, count)
        emitted[:, -1] = torch.where(accepted == count - 1, bonus, emitted[:, -1])
        target_decoder.rewind(count)
        drafter.rewind(count)
        last = run.emit(emitted)
    return run.outputs, stats


class Run:
    """Which prompts are still going and what each has emitted."""

    def __init__(self, histories: list, max_new_tokens: int, eos_id):
        self.histories, self.max_new_tokens, self.eos_id = histories, max_new_tokens, eos_id
        self.outputs = [[] for _ in histories]
        self.alive = torch.arange(len(histories))  # row -> prompt
        self.kept_rows = self.alive

    def emit(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, count) for the alive rows -> the last token of the rows that go on (their
        `kept_rows` among the alive ones before)."""
        going = []
        for row, (prompt, new) in enumerate(zip(self.alive.tolist(), tokens.tolist())):
            done = False
            for token in new:
                if token == self.eos_id or len(self.outputs[prompt]) == self.max_new_tokens:
                    done = True
                    break
                self.outputs[prompt].append(token)
                self.histories[prompt].append(token)
            done = done or len(self.outputs[prompt]) == self.max_new_tokens
            if not done:
                going.append(row)
        self.kept_rows = torch.tensor(going, dtype=torch.long)
        self.alive = self.alive[self.kept_rows]
        return tokens[self.kept_rows, -1]
