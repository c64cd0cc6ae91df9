"""Beam search, one core for every model that decodes step by step.

The core drives a "steps" object: `next_logits(generated (N, T)) -> (N, V)`, the logits of the
next token of each of the N = B * K rows (K beams per input) given the tokens chosen so far,
and `reorder(rows)`, called when beams move. The seq2seq decoder (`seq2seq.DecoderSteps`) is
one; a causal LM over its decode state (`generate.CausalSteps`) is another.

It keeps `num_beams` running hypotheses per input and up to `num_beams` finished ones, scored by
sum of log-probabilities / generated_length ** length_penalty, and follows the stopping rules
of Hugging Face `generate` (early_stopping True, False or "never"), so the same weights give the
same sequences.
"""

import dataclasses

import torch

from ..errors import UserError
from .generate import CausalSteps

EARLY_STOPPING = (True, False, "never")


@dataclasses.dataclass
class BeamSearch:
    num_beams: int = 4
    max_new_tokens: int = 64
    length_penalty: float = 1.0  # > 0 favours longer hypotheses, < 0 shorter ones
    early_stopping: object = False  # True: stop at num_beams finished; False: when none can improve; "never"
    num_return: int = 1  # n-best: how many finished hypotheses to return per input
    use_cache: bool = True
    compile: bool = False  # causal LMs: a compiled single-token step (inference/generate.py)

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
    tokens: list  # generated ids, without a start token and without eos
    score: float  # sum of log-probabilities / length ** length_penalty


def until_eos(tokens: list, eos_id) -> list:
    return tokens[:tokens.index(eos_id)] if eos_id is not None and eos_id in tokens else tokens


def _take(x, index):
    """x (B, N, ...), index (B, M) -> (B, M, ...): per-row gather along dim 1."""
    return x[torch.arange(x.size(0), device=x.device)[:, None], index]


def search(steps, batch: int, options: BeamSearch, eos_id=None, device="cpu") -> list:
    """Beam search over `steps` for `batch` inputs -> for each, its `num_return` best finished
    Hypothesis records, best first. eos_id None: hypotheses end only at max_new_tokens."""
    k, total = options.num_beams, options.max_new_tokens
    # running beams: their tokens so far and summed log-probabilities
    running = torch.zeros((batch, k, total), dtype=torch.long, device=device)
    running_scores = torch.full((batch, k), float("-inf"), device=device)
    running_scores[:, 0] = 0.0  # all beams start equal: expand only the first at the first step
    # finished hypotheses, best first; a slot is empty while its score is -inf
    done = torch.zeros((batch, k, total), dtype=torch.long, device=device)
    done_scores = torch.full((batch, k), float("-inf"), device=device)
    improvable = torch.ones(batch, dtype=torch.bool, device=device)  # may a running beam still beat the worst finished?
    candidates_rank = torch.arange(2 * k, device=device)[None, :]
    for step in range(total):
        length = step + 1  # generated tokens, counting the one chosen now
        logits = steps.next_logits(running[:, :, :step].reshape(batch * k, step))
        log_probs = logits.float().log_softmax(-1).view(batch, k, -1) + running_scores[:, :, None]
        vocab = log_probs.size(-1)
        scores, flat = log_probs.view(batch, -1).topk(2 * k, dim=-1)  # (B, 2K) best continuations
        parent, token = flat // vocab, flat % vocab
        candidates = _take(running, parent)  # (B, 2K, total)
        candidates[:, :, step] = token
        ends = (token == eos_id) if eos_id is not None else torch.zeros_like(token, dtype=torch.bool)
        if length == total:
            ends = torch.ones_like(ends)
        # finished: candidates among the top K that end, while their input may still improve
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
        hoped_length = total if options.early_stopping == "never" and options.length_penalty > 0 else length
        best_hope = running_scores[:, 0] / hoped_length ** options.length_penalty
        full = (done_scores > float("-inf")).all(dim=-1)
        improvable &= ~(full & (best_hope <= done_scores[:, -1]))
        if not bool(improvable.any()) or (options.early_stopping is True and bool(full.all())):
            break
    return [[Hypothesis(until_eos(done[b, j].tolist(), eos_id), done_scores[b, j].item())
             for j in range(options.num_return)] for b in range(batch)]


@torch.inference_mode()
def causal_beam_search(model, prompts: list, options: BeamSearch, eos_id: int = None) -> list:
    """Beam search continuing each prompt (a list of ids; a batch may mix lengths) with a causal
    LM, through its decode state -> for each prompt its `num_return` best Hypothesis records,
    best first (tokens after the prompt, without eos)."""
    steps = CausalSteps(model, prompts, options.use_cache, options.max_new_tokens, copies=options.num_beams,
                        compile=options.compile)
    return search(steps, len(prompts), options, eos_id, steps.device)
