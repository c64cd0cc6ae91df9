"""Speculative decoding: exactly the target's distribution, token for token the target's greedy
output, for every causal family through its own decode state, in batches."""

import pytest
import torch

from attnlab.errors import UserError
from attnlab.inference import Sampling, generate
from attnlab.inference import speculative
from attnlab.inference.speculative import (Draws, LookupDrafter, ModelDrafter, accept, accept_rows, emitted,
                                          round_counts, speculative_generate)
from attnlab.models.base import CAUSAL_LM, FAMILIES, PRESETS, build_model, family_spec, preset

CAUSAL = [spec for name, spec in sorted(FAMILIES.items()) if spec.kind == CAUSAL_LM]
TINY_CAUSAL = [name for name, config in PRESETS.items() if family_spec(config).kind == CAUSAL_LM and "tiny" in name]
PROMPTS = [[5, 6, 7, 8, 9], [3], [4, 4, 2, 9, 1, 1, 7, 3]]


def tiny(spec, seed):
    torch.manual_seed(seed)
    return build_model(preset(spec.tiny_preset)).eval()


def test_the_emitted_tokens_follow_the_target_and_acceptance_is_the_overlap():
    """Vocabulary 8, k = 4, 200,000 rounds at once: p_j and q_j differ at each position j."""
    torch.manual_seed(0)
    rows, k, vocab = 200_000, 4, 8
    p = torch.rand(k + 1, vocab).double().pow(3)
    p = p / p.sum(-1, keepdim=True)
    q = torch.rand(k, vocab).double().pow(3)
    q = q / q.sum(-1, keepdim=True)
    generator = torch.Generator().manual_seed(1)
    drafted = torch.stack([torch.multinomial(q[j], rows, replacement=True, generator=generator) for j in range(k)], 1)
    accepted, bonus = accept(p.expand(rows, -1, -1), q.expand(rows, -1, -1), drafted, generator)
    emitted = torch.cat([drafted, bonus[:, None]], dim=1)
    emitted[torch.arange(rows), accepted] = bonus  # a row's tokens: its accepted drafts, then the bonus
    for j in range(k + 1):  # the j-th token of every row that emits one follows p_j
        tokens = emitted[accepted >= j, j]
        frequencies = torch.bincount(tokens, minlength=vocab).double() / len(tokens)
        assert 0.5 * (frequencies - p[j]).abs().sum() < 0.01, j
    first_kept = (accepted >= 1).double().mean()
    assert abs(first_kept - torch.minimum(p[0], q[0]).sum()) < 0.01


def test_rows_in_lockstep_emit_prefixes_of_exact_samples():
    """Pairs of rows cut to the fewest tokens either emits: a row's count is then fixed by the other
    row's draws, so its j-th token, where it emits one, still follows p_j. (Cutting a pair only when
    it loses at most two tokens looks at a row's own later draws, and fails here: 0.02 at j = 1.)"""
    torch.manual_seed(0)
    pairs, k, vocab = 100_000, 3, 6
    p = torch.rand(k + 1, vocab).double().pow(3)
    p = p / p.sum(-1, keepdim=True)
    q = torch.rand(k, vocab).double().pow(3)
    q = 0.6 * p[:k] + 0.4 * q / q.sum(-1, keepdim=True)  # drafts mostly kept, so that rows reach j = k
    generator = torch.Generator().manual_seed(1)
    rows = 2 * pairs
    drafted = torch.stack([torch.multinomial(q[j], rows, replacement=True, generator=generator) for j in range(k)], 1)
    accepted, bonus = accept(p.expand(rows, -1, -1), q.expand(rows, -1, -1), drafted, generator)
    counts = torch.cat([round_counts(pair, lockstep=True) for pair in accepted.view(pairs, 2)])
    assert bool((counts <= accepted + 1).all()) and (counts < accepted + 1).any()
    tokens = emitted(drafted, bonus, accepted, counts)
    for j in range(k + 1):
        kept = torch.tensor([row[j] for row in tokens if len(row) > j])
        frequencies = torch.bincount(kept, minlength=vocab).double() / len(kept)
        assert 0.5 * (frequencies - p[j]).abs().sum() < 0.01, j


def test_certain_drafts_and_greedy_rows_take_the_one_hot_arithmetic_without_building_it():
    """q = None (each draft had probability one) draws what a one-hot q draws; a greedy row keeps the
    drafts equal to the target's argmax and then takes it, as `accept` does on one-hot distributions."""
    torch.manual_seed(0)
    rows, k, vocab = 64, 4, 6
    logits = torch.randn(rows, k + 1, vocab)
    best = logits.argmax(-1)
    drafted = torch.where(torch.rand(rows, k) < 0.7, best[:, :k], torch.randint(vocab, (rows, k)))
    one_hot = torch.nn.functional.one_hot(drafted, vocab).double()
    p = logits.double().softmax(-1)
    certain = accept(p, None, drafted, torch.Generator().manual_seed(3))
    spelled_out = accept(p, one_hot, drafted, torch.Generator().manual_seed(3))
    assert torch.equal(certain[0], spelled_out[0]) and torch.equal(certain[1], spelled_out[1])
    accepted, bonus = accept_rows(logits, None, drafted, [(None, Draws(Sampling(temperature=0)))])
    expected = accept(torch.nn.functional.one_hot(best, vocab).double(), one_hot, drafted)
    assert torch.equal(accepted, expected[0]) and torch.equal(bonus, expected[1])
    assert 0 < accepted.float().mean() < k  # rows stop at different drafts


@pytest.mark.parametrize("name", TINY_CAUSAL)
def test_greedy_output_is_the_targets_token_for_token_in_a_batch(name):
    """Every causal family's tiny presets (hybrids too: a state with both a history and a memory)."""
    torch.manual_seed(0)
    target = build_model(preset(name)).eval()
    torch.manual_seed(1)
    draft = build_model(preset(name)).eval()
    greedy = Sampling(max_new_tokens=12, temperature=0)
    expected = generate(target, PROMPTS, greedy)
    for drafter in (ModelDrafter(draft), LookupDrafter()):
        assert speculative_generate(target, drafter, PROMPTS, greedy, draft_tokens=3)[0] == expected


@pytest.mark.parametrize("spec", CAUSAL, ids=[s.name for s in CAUSAL])
def test_a_drafter_equal_to_the_target_has_every_sampled_token_accepted(spec):
    """Same model on both sides: p == q at every drafted position, unless the two states disagree."""
    target = tiny(spec, 0)
    sampling = Sampling(max_new_tokens=10, temperature=1.0, top_k=20, seed=3)
    outputs, stats = speculative_generate(target, ModelDrafter(tiny(spec, 0)), PROMPTS, sampling)
    assert stats.acceptance_rate == 1.0 and [len(o) for o in outputs] == [10, 10, 10]


def test_eos_ends_a_row_and_the_others_go_on():
    spec = next(s for s in CAUSAL if s.name == "gpt")
    target = tiny(spec, 0)
    greedy = Sampling(max_new_tokens=12, temperature=0)
    plain = generate(target, PROMPTS, greedy)
    eos = plain[0][3]  # the fourth token of the first row ends it there
    expected = generate(target, PROMPTS, greedy, eos_id=eos)
    got, _ = speculative_generate(target, ModelDrafter(tiny(spec, 1)), PROMPTS, greedy, eos_id=eos, draft_tokens=3)
    assert got == expected and len(got[0]) <= 3


def test_generation_runs_past_the_context_window_matching_the_target_until_a_restart():
    spec = next(s for s in CAUSAL if s.name == "gpt")
    target = tiny(spec, 0)
    greedy = Sampling(max_new_tokens=target.config.max_seq_len + 10, temperature=0)
    expected = generate(target, PROMPTS[:1], greedy)
    got, _ = speculative_generate(target, ModelDrafter(tiny(spec, 1)), PROMPTS[:1], greedy, draft_tokens=3)
    assert len(got[0]) == len(expected[0])
    exact = target.config.max_seq_len - len(PROMPTS[0]) - 3  # the rounds before speculation restarts its states
    assert got[0][:exact] == expected[0][:exact]


def test_rows_that_keep_different_counts_fill_the_window_with_padding_that_is_trimmed_not_restarted(monkeypatch):
    """Rows right-align after each round, so the state holds more columns than any row's tokens; the
    padding every row has in front is dropped before a restart (a prefill of every row) is needed."""
    spec = next(s for s in CAUSAL if s.name == "gpt")
    target = tiny(spec, 0)
    window = target.config.max_seq_len
    prompts = [[5, 6, 7, 8, 9] * 4, [3, 1] * 10]  # equal lengths: no padding at the start
    greedy = Sampling(max_new_tokens=window - 20 - 5, temperature=0)  # the longest row never passes the window
    expected = generate(target, prompts, greedy)
    decoders = []
    monkeypatch.setattr(speculative.Decoder, "__init__", counted(speculative.Decoder.__init__, decoders))
    got, stats = speculative_generate(target, ModelDrafter(tiny(spec, 1)), prompts, greedy, draft_tokens=4)
    assert got == expected and len(decoders) == 2  # the target's and the draft's, never rebuilt
    assert 0 < stats.acceptance_rate < 1


def test_rows_told_to_move_in_lockstep_stay_unpadded_and_exact(monkeypatch):
    """Where `DraftLength.lockstep` says so (drafts rarely hold), rows that accept different counts
    all emit the fewest, so the states never take padding; greedy output is still the target's."""
    spec = next(s for s in CAUSAL if s.name == "gpt")
    target = tiny(spec, 0)
    prompts = [[5, 6, 7, 8, 9], [3, 1, 3, 1, 3]]  # equal lengths: no padding at the start
    greedy = Sampling(max_new_tokens=20, temperature=0)
    monkeypatch.setattr(speculative.DraftLength, "lockstep", lambda self, padded: not padded)
    decoders, rounds = [], []
    monkeypatch.setattr(speculative.Decoder, "__init__", counted(speculative.Decoder.__init__, decoders))
    monkeypatch.setattr(speculative, "accept_rows", returned(speculative.accept_rows, rounds))
    got, _ = speculative_generate(target, ModelDrafter(tiny(spec, 1)), prompts, greedy, draft_tokens=3)
    assert got == generate(target, prompts, greedy)
    assert any(accepted[0] != accepted[1] for accepted, _ in rounds)  # rows that would have parted
    assert not any(decoder.state.padded for decoder, *_ in decoders)


def returned(function, results: list):
    def wrapper(*args, **kwargs):
        results.append(function(*args, **kwargs))
        return results[-1]
    return wrapper


def counted(function, calls: list):
    def wrapper(*args, **kwargs):
        calls.append(args)
        return function(*args, **kwargs)
    return wrapper


def test_prompt_lookup_proposes_what_followed_the_last_ngram():
    drafter = LookupDrafter(min_ngram=1)
    assert drafter.continuation([1, 2, 3, 4, 1, 2], 3) == [3, 4, 1]
    assert drafter.continuation([1, 2, 3, 9, 2], 3) == [3, 9, 2]  # the last 1-gram
    assert drafter.continuation([5, 6, 5], 3) == [6, 5]  # what there is to copy
    assert drafter.continuation([7, 8], 3) == []  # no earlier occurrence
    assert LookupDrafter().continuation([1, 2, 3, 9, 2], 3) == []  # by default a match needs 2 tokens
    assert LookupDrafter().continuation([1, 2, 3, 4, 1, 2], 3) == [3, 4, 1]
    with pytest.raises(UserError, match="min_ngram <= max_ngram"):
        LookupDrafter(max_ngram=2, min_ngram=3)
    drafted, q = drafter.propose(torch.tensor([2, 8]), [[1, 2, 3, 4, 1, 2], [5, 6, 5]], [], 3)
    assert drafted.tolist() == [[3, 4, 1], [6, 5, 5]] and q is None  # each proposal is certain
    drafted, _ = drafter.propose(torch.tensor([8]), [[7, 8]], [], 3)
    assert drafted.shape == (1, 0)  # nothing to copy: a plain step


def test_an_empty_prompt_is_refused():
    spec = next(s for s in CAUSAL if s.name == "gpt")
    with pytest.raises(UserError, match="at least one token"):
        speculative_generate(tiny(spec, 0), LookupDrafter(), [[1], []], Sampling())


def test_generate_speculates_with_a_draft_checkpoint_or_prompt_lookup(tmp_path, capsys):
    from attnlab.checkpoint import save_checkpoint
    from attnlab.cli import main
    from attnlab.processors import TextProcessor

    spec = next(s for s in CAUSAL if s.name == "gpt")
    target, draft = tiny(spec, 0), tiny(spec, 1)
    tokenizer = TextProcessor.example(target.config)
    save_checkpoint(tmp_path / "target", target, tokenizer)
    save_checkpoint(tmp_path / "draft", draft, tokenizer)
    base = ["generate", str(tmp_path / "target"), "--prompt", "to be or", "--prompt", "not",
            "--temperature", "0", "--max-new-tokens", "15"]
    assert main(base) == 0
    plain = capsys.readouterr().out
    for extra in (["--draft", str(tmp_path / "draft"), "--draft-tokens", "3"], ["--prompt-lookup"]):
        assert main([*base, *extra]) == 0
        captured = capsys.readouterr()
        assert captured.out == plain and "accepted" in captured.err
    other = TextProcessor.example(target.config.replace(vocab_size=target.config.vocab_size - 1))
    save_checkpoint(tmp_path / "stranger", draft, other)
    assert main([*base, "--draft", str(tmp_path / "stranger")]) == 2
    assert "another tokenizer" in capsys.readouterr().err
    assert main([*base, "--prompt-lookup", "--draft-tokens", "0"]) == 2
    assert "--draft-tokens" in capsys.readouterr().err
