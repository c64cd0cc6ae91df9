"""Speculative decoding: a cheap drafter proposes k tokens, the target model checks them all in
one forward pass, and each row keeps the longest prefix the target accepts plus one token of the
target's own, so a round emits between 1 and k + 1 tokens.

A drafted token x is kept with probability min(1, p(x) / q(x)) (p the target's distribution, q the
drafter's); at the first rejection the next token is drawn from norm(max(p - q, 0)), and when all
k are kept, from p after them. The emitted tokens are then distributed exactly as the target's
alone (Leviathan et al. 2023; Chen et al. 2023). Both distributions are warped by the same
temperature / top-k / top-p in float64; greedy decoding (temperature 0) is that rule on one-hot
distributions, computed on token ids (a draft is kept while it equals the target's argmax), so its
output is token for token the target's.

Drafters: a small causal LM with the target's tokenizer (`ModelDrafter`), or prompt lookup
(`LookupDrafter`: the tokens that followed the latest earlier occurrence of the last n-gram, with
probability one; no model at all). The number drafted per round is fixed, or adaptive
(`DraftLength("auto")`): it follows the running acceptance rate (prompt lookup: the measured speed).

Each row keeps what it accepted. Where every decode state can forget columns row by row (a KV
cache, a re-read window), rows then hold different numbers of tokens, and `truncate` with a length
per row right-aligns them again. A state that cannot forget (a memory, an SSM state) is restored
from a copy and re-fed, which takes one count for every row: there the batch moves in lockstep, by
the fewest tokens any row accepted, plus one (the tokens a row accepted beyond that are a prefix
of an exact sample, so dropping them keeps the output exact). So does a batch whose states hold no
padding while drafts rarely hold (`DraftLength.lockstep`), to keep them unpadded.

Rows draw with their own sampling settings and generators (`Draws`; the server's requests each
have theirs); rows that share one `Draws` are warped and drawn together.
"""

import collections
import copy
import dataclasses
import time
from typing import Optional, Union

import torch

from ..errors import UserError
from .generate import Sampling, left_pad, sample, warped_probabilities


@dataclasses.dataclass
class SpeculationStats:
    rounds: int = 0
    drafted: int = 0  # tokens proposed, over rows and rounds
    accepted: int = 0  # of those, the ones the target accepted

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / max(self.drafted, 1)


class DraftLength:
    """Tokens drafted per round: a fixed k, or "auto" (None: 4 for a draft model, "auto" for a free
    drafter, whose fixed k loses under sampling: benchmarks/RESULTS.md, issue 21).

    "auto": start at 4, then after each round that drafted anything grow by one (up to 16) while
    the running acceptance rate is above 0.8 and shrink by one (down to 1) while it is below 0.5.
    A longer draft is accepted less often per token, so k settles where the drafts mostly hold. Any
    k keeps the output exact: each round is a complete check.

    A `free` drafter (prompt lookup: no model, no state) only pays for the wider verification, and
    its hits come in runs (a copied passage, then nothing), so under "auto" it keeps k = 4 and drafts
    only while that is measured to be faster than not drafting: tokens per second over its last
    WINDOW drafting rounds against the last WINDOW plain rounds (k = 0). The first PLAIN_FIRST
    rounds are plain, to know the second. A look (drafting after a pause) is judged once it has
    LOOK rounds; while it is slower, drafting pauses, first for PAUSE rounds and twice as long after
    each look that did not pay (up to LONGEST_PAUSE). The break-even acceptance depends on what a
    wider verification costs on the machine at the batch size, which a measured speed knows and a
    fixed threshold does not. Where drafts rarely hold (`rarely_kept`: under RARELY of the at least
    EVIDENCE drafted so far, as prompt lookup under sampling), a look is judged after each of its
    rounds, so that one that does not pay costs about one wider verification, not LOOK."""

    START, MOST, GROW_ABOVE, SHRINK_BELOW, MEMORY = 4, 16, 0.8, 0.5, 0.5
    PLAIN_FIRST, WINDOW, LOOK, PAUSE, LONGEST_PAUSE = 2, 8, 4, 16, 256
    RARELY, EVIDENCE = 0.1, 32

    def __init__(self, k: Union[int, str, None], free: bool = False):
        k = ("auto" if free else self.START) if k is None else k
        self.adaptive = k == "auto"
        if not self.adaptive and not (isinstance(k, int) and k >= 1):
            raise UserError(f"draft tokens must be a positive integer or 'auto', got {k!r}")
        self.size = self.START if self.adaptive else k
        self.most = self.MOST if self.adaptive and not free else self.size
        self.free = free
        self.rate = None  # running acceptance rate (a model drafter)
        # a free drafter: (tokens, seconds) of recent rounds of each kind; rounds left that draft nothing
        self.recent = {"plain": collections.deque(maxlen=self.WINDOW), "drafting": collections.deque(maxlen=self.WINDOW)}
        self.paused = self.PLAIN_FIRST if self.adaptive and free else 0
        self.next_pause = self.PAUSE
        self.stats = SpeculationStats()  # every round so far

    @property
    def k(self) -> int:
        """Tokens to draft this round (0 while paused)."""
        return 0 if self.paused else self.size

    def update(self, accepted: int, drafted: int, emitted: int, seconds: float):
        """After a round that drafted `drafted` tokens over its rows, of which `accepted` held, and
        emitted `emitted` tokens in `seconds`."""
        stats = self.stats
        stats.rounds, stats.drafted, stats.accepted = stats.rounds + 1, stats.drafted + drafted, stats.accepted + accepted
        if not self.adaptive:
            return
        if self.free:
            self._pace(drafted > 0, emitted, seconds)
        elif drafted:
            rate = accepted / drafted
            self.rate = rate if self.rate is None else self.MEMORY * self.rate + (1 - self.MEMORY) * rate
            if self.rate > self.GROW_ABOVE:
                self.size = min(self.size + 1, self.MOST)
            elif self.rate < self.SHRINK_BELOW:
                self.size = max(self.size - 1, 1)

    @property
    def rarely_kept(self) -> bool:
        """Whether the drafts so far, at least EVIDENCE of them, held less often than RARELY."""
        return self.stats.drafted >= self.EVIDENCE and self.stats.accepted < self.RARELY * self.stats.drafted

    def lockstep(self, padded: bool) -> bool:
        """Whether the rows of the coming round emit the fewest tokens any of them accepted
        (`round_counts`), with `padded` whether a decode state holds padding. Rows that emit
        different counts leave padding in front of the shorter ones, and from then on every step
        of the batch takes the masked path (4-5 % slower for the 12-layer target of
        benchmarks/RESULTS.md, issue 21); where drafts rarely hold, that costs more than the few
        tokens a row kept beyond the others. A free drafter (prompt lookup) is presumed rarely
        right until EVIDENCE drafts say otherwise: its first look would otherwise pad the states.
        Decided from the rounds before, so exact."""
        unproven = self.free and self.stats.drafted < self.EVIDENCE
        return not padded and (unproven or self.rarely_kept)

    def _pace(self, drafting: bool, emitted: int, seconds: float):
        looking = self.recent["drafting"]
        self.recent["drafting" if drafting else "plain"].append((emitted, seconds))
        if not drafting:
            if self.paused:
                self.paused -= 1
                if not self.paused:
                    looking.clear()  # the next look is judged on its own rounds
            return
        if len(looking) < self.LOOK and not self.rarely_kept:
            return
        if self._speed("drafting") >= self._speed("plain"):
            if len(looking) == self.LOOK:
                self.next_pause = self.PAUSE  # a look that paid
        else:
            self.paused, self.next_pause = self.next_pause, min(2 * self.next_pause, self.LONGEST_PAUSE)

    def _speed(self, kind: str) -> float:
        rounds = self.recent[kind]
        return sum(tokens for tokens, _ in rounds) / max(sum(seconds for _, seconds in rounds), 1e-9)


@dataclasses.dataclass(eq=False)
class Draws:
    """How rows draw their tokens: sampling settings and a random generator (None: torch's own)."""
    sampling: Sampling
    generator: Optional[torch.Generator] = None


def row_groups(draws: list) -> list:
    """One Draws-like object (with .sampling and .generator) per row -> [(rows (n,) long, draws)], one
    entry per distinct object."""
    rows = {}
    for row, d in enumerate(draws):
        rows.setdefault(id(d), (d, []))[1].append(row)
    return [(torch.tensor(r), d) for d, r in rows.values()]


def by_group(groups: list, fn, *tensors) -> tuple:
    """fn(*the group's rows of each tensor (None stays None), draws) -> a tuple of tensors, run per group
    and put back in row order."""
    if len(groups) == 1:
        return fn(*tensors, groups[0][1])
    parts = [(rows, fn(*(None if t is None else t[rows.to(t.device)] for t in tensors), d)) for rows, d in groups]
    out = tuple(part.new_empty((len(tensors[0]),) + part.shape[1:]) for part in parts[0][1])
    for rows, results in parts:
        for whole, part in zip(out, results):
            whole[rows.to(whole.device)] = part
    return out


def warp(logits: torch.Tensor, groups: list) -> torch.Tensor:
    """logits (B, ..., V) -> each row's sampling distribution (B, ..., V), float64."""
    return by_group(groups, lambda x, d: (warped_probabilities(x, d.sampling),), logits)[0]


def draw(probs: torch.Tensor, groups: list) -> torch.Tensor:
    """probs (B, V) -> one token per row (B,), from its own generator (greedy: the argmax)."""
    def one(p, d):
        return (p.argmax(-1) if d.sampling.temperature == 0 else
                sample(p, d.generator),)
    return by_group(groups, one, probs)[0]


def accept_rows(logits: torch.Tensor, q: Optional[torch.Tensor], drafted: torch.Tensor, groups: list) -> tuple:
    """The target's logits (B, k + 1, V) at the k drafted positions and after them; q (B, k, V) the
    drafter's distributions, or None where each drafted token had probability one (greedy drafting,
    prompt lookup); drafted (B, k) -> (accepted (B,) in 0..k, next token (B,)), each row drawing
    with its own settings and generator.

    A greedy row keeps the drafts equal to the target's argmax, then takes the argmax: what `accept`
    does with one-hot distributions, without building them (a verify at GPT-2's vocabulary spent
    about 3 ms on those). Nothing drafted (a paused or empty lookup) is a plain decoding step."""
    def one(x, q, drafted, d):
        if d.sampling.temperature == 0:
            best = x.argmax(-1)  # (B, k + 1)
            accepted = (drafted == best[:, :drafted.size(1)]).long().cumprod(-1).sum(-1)
            return accepted, best.gather(1, accepted[:, None]).squeeze(1)
        p = warped_probabilities(x, d.sampling)
        if drafted.size(1) == 0:
            nothing = torch.zeros(len(p), dtype=torch.long, device=p.device)
            return nothing, sample(p[:, 0], d.generator)
        return accept(p, q, drafted, d.generator)
    return by_group(groups, one, logits, q, drafted)


def accept(p: torch.Tensor, q: Optional[torch.Tensor], drafted: torch.Tensor, generator=None) -> tuple:
    """p (B, k + 1, V): the target's probabilities at the k >= 1 drafted positions and after them;
    q (B, k, V): the drafter's, or None: each drafted token had probability one; drafted (B, k)
    -> (accepted (B,) in 0..k, next token (B,))."""
    rows, k = drafted.shape
    index = torch.arange(rows, device=p.device)
    p_drafted = p[:, :k].gather(-1, drafted[..., None]).squeeze(-1)  # (B, k)
    q_drafted = torch.ones_like(p_drafted) if q is None else q.gather(-1, drafted[..., None]).squeeze(-1)
    u = torch.rand(rows, k, generator=generator, dtype=p.dtype, device=p.device)
    accepted = (u * q_drafted < p_drafted).long().cumprod(-1).sum(-1)  # leading u < p / q
    # where each row stopped: norm(max(p - q, 0)) after a rejection, p after k acceptances
    p_next, at = p[index, accepted], accepted.clamp(max=k - 1)  # (B, V); the rejected position
    q_next = (torch.zeros_like(p_next).scatter_(-1, drafted[index, at][:, None], 1.0) if q is None
              else q[index, at]) * (accepted < k)[:, None]
    residual = (p_next - q_next).clamp(min=0)
    mass = residual.sum(-1, keepdim=True)
    pick = torch.where(mass > 0, residual / mass.clamp(min=1e-300), p_next)  # p == q: no residual
    return accepted, sample(pick, generator)


def round_counts(accepted: torch.Tensor, lockstep: bool) -> torch.Tensor:
    """accepted (B,): each row's accepted drafts -> how many tokens each row emits this round: its
    accepted drafts plus one, or in lockstep, the fewest any row emits. In lockstep a row's count
    is fixed by the other rows' draws, not by its own beyond that point, so what it emits is a prefix
    of an exact sample and the output stays exact; which of the two applies must likewise be decided
    before the round's draws are seen."""
    return (accepted.min() + 1).expand_as(accepted) if lockstep else accepted + 1


def emitted(drafted: torch.Tensor, bonus: torch.Tensor, accepted: torch.Tensor, counts: torch.Tensor) -> list:
    """-> each row's counts[r] new tokens: its first counts[r] - 1 drafts, then the target's own token
    where the row stopped at its own acceptance, else (a batch held back to a shorter count) its next draft."""
    rows = zip(drafted.tolist(), bonus.tolist(), accepted.tolist(), counts.tolist())
    return [tokens[:count - 1] + [extra if kept == count - 1 else tokens[count - 1]]
            for tokens, extra, kept, count in rows]


class Decoder:
    """A causal model's decode state over the rows of a batch. Each round starts with `mark`;
    `feed` runs tokens through the state; `rewind(counts)` keeps only each row's first counts[r]
    of the tokens fed since the mark (one count for all rows unless `truncatable`)."""

    def __init__(self, model, histories: list, extra: int):
        self.model, self.device = model, next(model.parameters()).device
        self.window = model.config.max_seq_len
        ids, mask = left_pad(histories, device=self.device)
        self.state = model.init_state(len(histories), min(self.window, ids.size(1) + extra))
        self.recurrent, self.truncatable = self.state.recurrent, self.state.truncatable
        if not self.recurrent and ids.size(1) > self.window:
            raise UserError(f"prompt of {ids.size(1)} tokens exceeds the model's context window of {self.window}")
        self.logits = model(ids, attention_mask=mask, state=self.state, only_last=True).logits[:, -1]  # (B, V)

    def mark(self):
        self.start, self.fed = self.state.length, []
        self.snapshot = None if self.truncatable else copy.deepcopy(self.state)

    def feed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, T) -> logits (B, T, V)."""
        self.fed.append(ids)
        return self.model(ids, state=self.state).logits

    def rewind(self, counts: torch.Tensor):
        fed = torch.cat(self.fed, dim=1)
        if bool((counts == fed.size(1)).all()):
            return
        if self.truncatable:
            self.state.truncate(self.start + counts.to(self.device))
            return
        self.state = self.snapshot  # a memory cannot forget: redo the kept tokens from the copy
        if int(counts[0]):
            self.model(fed[:, :int(counts[0])], state=self.state)

    @property
    def padded(self) -> bool:
        return self.state.padded

    def room(self, tokens: int) -> bool:
        return self.recurrent or self.state.length + tokens <= self.window

    def select(self, rows: torch.Tensor):
        self.state.select(rows.to(self.device))

    def trim(self):
        self.state.trim()

    def extend(self, other: "Decoder"):
        self.state.extend(other.state)


class ModelDrafter:
    """A small causal LM drafts k tokens, one step at a time, through its own decode state."""

    free = False  # its state must see every token, so it drafts every round

    def __init__(self, model):
        self.model, self.window = model, model.config.max_seq_len
        self.truncatable = model.init_state(1, 1).truncatable
        self.decoder = None

    def start(self, histories: list, extra: int):
        self.decoder = Decoder(self.model, histories, extra)

    def join(self, history: list, extra: int):
        """Add one row, prefilled on its own, below the batch's rows."""
        decoder = Decoder(self.model, [history], extra)
        if self.decoder is None:
            self.decoder = decoder
        else:
            self.decoder.extend(decoder)

    def propose(self, last: torch.Tensor, histories: list, groups: list, k: int) -> tuple:
        """last (B,): the newest token, not yet fed -> drafted (B, k), q (B, k, V) float64, or None
        when every row is greedy (each draft is the argmax, with probability one)."""
        self.decoder.mark()
        greedy = all(d.sampling.temperature == 0 for _, d in groups)
        tokens, probs, current = [], [], last
        for _ in range(k):
            logits = self.decoder.feed(current[:, None])[:, -1]  # (B, V)
            if greedy:
                current = logits.argmax(-1)
            else:
                probs.append(warp(logits, groups))
                current = draw(probs[-1], groups)
            tokens.append(current)
        self.last_drafted = current
        return torch.stack(tokens, dim=1), None if greedy else torch.stack(probs, dim=1)

    def rewind(self, counts: torch.Tensor):
        """counts (B,): keep the first counts[r] of [last, drafted...] (the last drafted one was never fed)."""
        if int(counts.max()) == len(self.decoder.fed) + 1:
            self.decoder.feed(self.last_drafted[:, None])
        self.decoder.rewind(counts)

    @property
    def padded(self) -> bool:
        return self.decoder.padded

    def room(self, tokens: int) -> bool:
        return self.decoder.room(tokens)

    def select(self, rows: torch.Tensor):
        self.decoder.select(rows)

    def trim(self):
        self.decoder.trim()

    def clear(self):
        self.decoder = None


class LookupDrafter:
    """Prompt lookup: propose the (up to k) tokens that followed the latest earlier occurrence of
    the last n tokens (n from `max_ngram` down to `min_ngram`), each with probability one. A row with
    a shorter match repeats its last proposal; when no row matches, the round drafts nothing and is a
    plain decoding step, so text with nothing to copy costs (almost) nothing extra.

    One matching token says little (with characters a 1-gram match almost always exists and is
    mostly wrong), so by default a match needs two (measured in benchmarks/RESULTS.md, issue 21)."""

    window = float("inf")
    truncatable = True
    padded = False  # no state
    free = True  # proposing costs nothing and keeps no state: DraftLength may pause it

    def __init__(self, max_ngram: int = 3, min_ngram: int = 2):
        if not 1 <= min_ngram <= max_ngram:
            raise UserError(f"prompt lookup needs 1 <= min_ngram <= max_ngram, got {min_ngram} and {max_ngram}")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def start(self, histories: list, extra: int):
        pass

    def join(self, history: list, extra: int):
        pass

    def propose(self, last: torch.Tensor, histories: list, groups: list, k: int) -> tuple:
        found = [self.continuation(tokens, k) for tokens in histories]
        width = max(map(len, found))  # 0: no row has anything to copy
        rows = [match or tokens[-1:] for match, tokens in zip(found, histories)]
        rows = [row + row[-1:] * (width - len(row)) for row in rows]  # each padded with its last token
        return torch.tensor(rows, dtype=torch.long, device=last.device)[:, :width], None  # (B, width): certain

    def continuation(self, tokens: list, k: int) -> list:
        """What (up to k tokens) followed the latest earlier occurrence of the longest matching tail ([] if none)."""
        if k == 0:  # paused (DraftLength): no search
            return []
        for n in range(min(self.max_ngram, len(tokens) - 1), self.min_ngram - 1, -1):
            tail = tokens[-n:]
            for start in range(len(tokens) - n - 1, -1, -1):
                if tokens[start:start + n] == tail:
                    return tokens[start + n:start + n + k]
        return []

    def rewind(self, counts: torch.Tensor):
        pass

    def room(self, tokens: int) -> bool:
        return True

    def select(self, rows: torch.Tensor):
        pass

    def trim(self):
        pass

    def clear(self):
        pass


@torch.no_grad()
def speculative_generate(target, drafter, prompts: list, sampling: Sampling, eos_id=None,
                         draft_tokens: Union[int, str, None] = None) -> tuple:
    """-> (new-token id lists, one per prompt, without eos; SpeculationStats). A model drafter
    must share the target's tokenizer. draft_tokens: k per round, "auto", or None: the drafter's
    default (`DraftLength`)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise UserError("every prompt needs at least one token")
    length = DraftLength(draft_tokens, free=drafter.free)
    if sampling.max_new_tokens == 0:
        return [[] for _ in prompts], length.stats
    device = next(target.parameters()).device
    draws = Draws(sampling, None if sampling.seed is None else torch.Generator(device).manual_seed(sampling.seed))
    extra = sampling.max_new_tokens + length.most + 1
    window = min(target.config.max_seq_len, drafter.window)  # a restart keeps this much history, less a round
    histories = [list(p) for p in prompts]
    target_decoder = Decoder(target, histories, extra)
    drafter.start(histories, extra)
    per_row = target_decoder.truncatable and drafter.truncatable
    run = Run(histories, sampling.max_new_tokens, eos_id)
    groups = [(None, draws)]  # one group: every row draws alike
    first = draw(warp(target_decoder.logits, groups), groups)
    last = torch.tensor(run.emit([[t] for t in first.tolist()]), device=device)
    while len(run.alive):
        started, k = time.perf_counter(), length.k
        if run.dropped:  # a row finished: the states keep the others (a copy of every cache)
            for part in (target_decoder, drafter):
                part.select(run.kept_rows)
        if per_row and not (target_decoder.room(k + 1) and drafter.room(k + 1)):
            # first drop the padding columns in front of every row (rows keeping different counts leave them)
            for part in (target_decoder, drafter):
                part.trim()
        if not (target_decoder.room(k + 1) and drafter.room(k + 1)):  # past a window: restart from history
            consumed = [histories[i][:-1][-(window - k - 1):] for i in run.alive.tolist()]
            target_decoder = Decoder(target, consumed, extra)
            drafter.start(consumed, extra)
        drafted, q = drafter.propose(last, [histories[i] for i in run.alive.tolist()], groups, k)
        target_decoder.mark()
        logits = target_decoder.feed(torch.cat([last[:, None], drafted], dim=1))  # (B, k' + 1, V)
        accepted, bonus = accept_rows(logits, q, drafted, groups)
        counts = round_counts(accepted, not per_row or length.lockstep(target_decoder.padded or drafter.padded))
        target_decoder.rewind(counts)
        drafter.rewind(counts)
        length.update(int(accepted.sum()), drafted.numel(), int(counts.sum()), time.perf_counter() - started)
        last = torch.tensor(run.emit(emitted(drafted, bonus, accepted, counts)), dtype=torch.long, device=device)
    return run.outputs, length.stats


class Run:
    """Which prompts are still going and what each has emitted."""

    def __init__(self, histories: list, max_new_tokens: int, eos_id):
        self.histories, self.max_new_tokens, self.eos_id = histories, max_new_tokens, eos_id
        self.outputs = [[] for _ in histories]
        self.alive = torch.arange(len(histories))  # row -> prompt
        self.kept_rows = self.alive

    def emit(self, tokens: list) -> list:
        """tokens: one list of new tokens per alive row -> the last token of the rows that go on (their
        `kept_rows` among the alive ones before)."""
        going = []
        for row, (prompt, new) in enumerate(zip(self.alive.tolist(), tokens)):
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
        self.dropped = len(going) < len(tokens)
        self.kept_rows = torch.tensor(going, dtype=torch.long)
        self.alive = self.alive[self.kept_rows]
        return [tokens[row][-1] for row in going]
