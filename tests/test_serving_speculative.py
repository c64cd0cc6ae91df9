"""`attnlab serve --draft / --prompt-lookup`: speculative decoding under continuous batching gives the
target's own greedy tokens per row, streams them, draws each request with its own settings, and
refuses a draft it cannot use at start-up."""

import json
import socket

import pytest
import torch
from fastapi.testclient import TestClient
from torch import nn

from attnlab.checkpoint import save_checkpoint
from attnlab.cli import build_parser, main
from attnlab.commands.serve import server_app
from attnlab.errors import UserError
from attnlab.inference import Sampling, generate
from attnlab.inference.speculative import DraftLength, LookupDrafter, ModelDrafter, speculative_generate
from attnlab.models import GPT, GPTConfig, TransformerXL, TransformerXLConfig
from attnlab.serving import engine
from attnlab.serving.app import ServeConfig, create_app
from attnlab.tokenizers import CharTokenizer

ALPHABET = "abcdefghijklmnopqrstuvwxyz .,!?"
PROMPTS = ["the cat sat", "a dog, a dog, a dog", "no"]


def gpt(seed, n_layer=2, vocab=len(ALPHABET)):
    """Large random weights, so that greedy continuations vary and a different draft is often wrong."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab, max_seq_len=64, n_layer=n_layer, n_head=2, d_model=32, tie_weights=False))
    for p in model.parameters():
        if p.dim() == 2:
            nn.init.normal_(p, 0.0, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def tokenizer():
    return CharTokenizer(ALPHABET)


def alone(tokenizer, prompt, max_tokens):
    return tokenizer.decode(generate(gpt(0), [tokenizer.encode(prompt)], Sampling(max_new_tokens=max_tokens,
                                                                                   temperature=0))[0])


def complete(client, **body):
    r = client.post("/v1/completions", json={"temperature": 0, "max_tokens": 20, **body})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("drafter, k", [("model", 3), ("model", "auto"), ("lookup", 4)])
def test_greedy_speculative_completions_are_the_targets_batched_and_streamed(tokenizer, drafter, k):
    target = gpt(0)
    drafter = ModelDrafter(gpt(1, n_layer=1)) if drafter == "model" else LookupDrafter()
    app = create_app(target, tokenizer, ServeConfig(max_batch=8, draft_tokens=k), drafter)
    expected = [alone(tokenizer, p, 20) for p in PROMPTS]
    with TestClient(app) as client:
        body = complete(client, prompt=PROMPTS)  # one request: its three rows decode in one batch
        assert [c["text"] for c in body["choices"]] == expected
        assert all(c["finish_reason"] == "length" for c in body["choices"])
        assert body["usage"]["completion_tokens"] == 60
        with client.stream("POST", "/v1/completions", json={"prompt": PROMPTS[1], "max_tokens": 20,
                                                            "temperature": 0, "stream": True}) as r:
            events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == expected[1]
        speculation = client.get("/health").json()["speculation"]
    assert 0 < speculation["acceptance_rate"] <= 1 and speculation["draft_tokens"] >= 1


def test_rows_moving_in_lockstep_complete_as_the_target_alone(tokenizer, monkeypatch):
    """Prompts of one length decode unpadded; where `DraftLength.lockstep` holds, every row emits the
    fewest tokens any row accepted, and each completion is still the target's."""
    monkeypatch.setattr(DraftLength, "lockstep", lambda self, padded: not padded)
    rounds = []  # (accepted, counts) of each round
    tokens_of = engine.emitted
    monkeypatch.setattr(engine, "emitted", lambda drafted, bonus, accepted, counts:
                        rounds.append((accepted.tolist(), counts.tolist())) or tokens_of(drafted, bonus, accepted, counts))
    prompts = ["the cat sat", "a dog, a do"]
    app = create_app(gpt(0), tokenizer, ServeConfig(max_batch=8, draft_tokens=3), LookupDrafter())
    with TestClient(app) as client:
        body = complete(client, prompt=prompts)
    assert [c["text"] for c in body["choices"]] == [alone(tokenizer, p, 20) for p in prompts]
    assert any(len(set(accepted)) > 1 for accepted, _ in rounds)  # rows that would have parted
    assert all(len(set(counts)) == 1 for _, counts in rounds)


def test_a_stop_string_ends_a_row_inside_a_round(tokenizer):
    target = gpt(0)
    text = alone(tokenizer, PROMPTS[0], 20)
    stop = text[5:7]
    app = create_app(target, tokenizer, ServeConfig(draft_tokens=4), ModelDrafter(target))  # all accepted
    with TestClient(app) as client:
        choice = complete(client, prompt=PROMPTS[0], stop=stop)["choices"][0]
    assert choice["text"] == text[:text.index(stop)] and choice["finish_reason"] == "stop"


def test_each_request_samples_with_its_own_settings_and_an_equal_draft_is_always_accepted(tokenizer):
    """The same model drafting: p == q at every drafted position, whatever each row's temperature and
    top_p, so long as each row warps both sides with its own settings; seeded requests repeat."""
    app = create_app(gpt(0), tokenizer, ServeConfig(max_batch=8, draft_tokens=3), ModelDrafter(gpt(0)))
    with TestClient(app) as client:
        first = complete(client, prompt=PROMPTS, temperature=0.7, top_p=0.8, seed=5, n=2)
        again = complete(client, prompt=PROMPTS, temperature=0.7, top_p=0.8, seed=5, n=2)
        other = complete(client, prompt=PROMPTS[0], temperature=1.5, max_tokens=30)
        assert client.get("/health").json()["speculation"]["acceptance_rate"] == 1.0
    assert [c["text"] for c in first["choices"]] == [c["text"] for c in again["choices"]]
    assert len(other["choices"][0]["text"]) == 30


def test_adaptive_draft_length_follows_the_acceptance_rate_and_stays_exact():
    length = DraftLength("auto")
    for _ in range(20):
        length.update(accepted=length.k, drafted=length.k, emitted=length.k + 1, seconds=0.01)
    assert length.k == DraftLength.MOST
    for _ in range(30):
        length.update(accepted=0, drafted=length.k, emitted=1, seconds=0.01)
    assert length.k == 1
    target, greedy = gpt(0), Sampling(max_new_tokens=40, temperature=0)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9]]
    for draft in (gpt(0), gpt(1, n_layer=1)):  # drafts always right, and often wrong
        got, stats = speculative_generate(target, ModelDrafter(draft), prompts, greedy, draft_tokens="auto")
        assert got == generate(target, prompts, greedy)


def test_serve_refuses_a_draft_it_cannot_use_at_start_up(tmp_path, tokenizer, capsys):
    save_checkpoint(tmp_path / "target", gpt(0), tokenizer)
    save_checkpoint(tmp_path / "stranger", gpt(1, vocab=len(ALPHABET) - 1), CharTokenizer(ALPHABET[:-1]))
    save_checkpoint(tmp_path / "draft", gpt(1, n_layer=1), tokenizer)
    with socket.socket() as probe:  # a free port: the start-up checks bind it before loading
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    serve = ["serve", str(tmp_path / "target"), "--port", port, "--device", "cpu"]
    for extra, message in ((["--draft", str(tmp_path / "stranger")], "another tokenizer"),
                           (["--draft", str(tmp_path / "draft"), "--prompt-lookup"], "choose one drafter"),
                           (["--prompt-lookup", "--draft-tokens", "many"], "--draft-tokens must be")):
        assert main([*serve, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
    args = build_parser().parse_args([*serve, "--draft", str(tmp_path / "draft"), "--draft-tokens", "auto"])
    with TestClient(server_app(args)) as client:
        assert client.get("/health").json()["speculation"]["draft_tokens"] == DraftLength.START
    memory = TransformerXL(TransformerXLConfig(vocab_size=len(ALPHABET), max_seq_len=32, segment_length=8,
                                               mem_len=8, n_layer=1, n_head=2, d_model=16))
    with pytest.raises(UserError, match="keeps a memory"):
        create_app(memory, tokenizer, ServeConfig(), LookupDrafter())


def test_a_free_drafter_drafts_while_that_is_measured_faster_and_pauses_longer_after_each_look_that_does_not_pay():
    length = DraftLength("auto", free=True)

    def plain():  # 100 tokens/s
        length.update(accepted=0, drafted=0, emitted=1, seconds=0.010)

    def draft(tokens, seconds=0.013):  # tokens / 0.013 s: 1 is 77 tokens/s, 3 is 231
        length.update(accepted=tokens - 1, drafted=4, emitted=tokens, seconds=seconds)

    def slow_draft():  # keeps a draft, 80 tokens/s
        draft(2, seconds=0.025)

    def pause_length():
        rounds = 0
        while length.k == 0:
            plain()
            rounds += 1
        return rounds

    assert pause_length() == DraftLength.PLAIN_FIRST and length.k == DraftLength.START  # plain first, to know it
    for _ in range(DraftLength.LOOK - 1):  # slower, but not judged before LOOK drafting rounds
        slow_draft()
    plain()  # nothing to copy this round: a plain step, still drafting
    assert length.k == DraftLength.START
    slow_draft()
    assert pause_length() == DraftLength.PAUSE
    for _ in range(DraftLength.LOOK):  # another look that does not pay: twice as long a pause
        slow_draft()
    assert pause_length() == 2 * DraftLength.PAUSE
    for _ in range(DraftLength.LOOK):  # a look that pays: it goes on drafting
        draft(3)
    assert length.k == DraftLength.START
    for _ in range(7):  # misses: the last WINDOW drafting rounds fall behind at the seventh
        assert length.k == DraftLength.START
        draft(1)
    assert pause_length() == DraftLength.PAUSE  # the look paid, so the pause is short again
    assert not length.rarely_kept and not length.lockstep(padded=False)  # 16 of 76 drafts kept
    free, model = DraftLength("auto", free=True), DraftLength("auto")
    for _ in range(DraftLength.PLAIN_FIRST):
        free.update(accepted=0, drafted=0, emitted=1, seconds=0.010)
    for length in (free, model):  # a rate of 0.25, but faster: a model drafter shrinks, a free one keeps its length
        length.update(accepted=1, drafted=4, emitted=2, seconds=0.010)
    assert (free.k, model.k) == (DraftLength.START, DraftLength.START - 1)
    fixed = DraftLength(4, free=True)  # a fixed k never pauses
    for _ in range(5):
        fixed.update(accepted=0, drafted=4, emitted=1, seconds=1.0)
    assert fixed.k == 4
    lookup_default, model_default = DraftLength(None, free=True), DraftLength(None)
    assert lookup_default.adaptive and (model_default.adaptive, model_default.k) == (False, DraftLength.START)


def test_where_drafts_rarely_hold_a_look_is_judged_every_round_and_unpadded_rows_move_together():
    length = DraftLength("auto", free=True)  # plain rounds: 400 tokens/s over 4 rows
    for _ in range(DraftLength.PLAIN_FIRST):
        length.update(accepted=0, drafted=0, emitted=4, seconds=0.010)
    assert length.lockstep(padded=False) and not length.lockstep(padded=True)  # lookup, unproven: rarely right
    length.update(accepted=0, drafted=DraftLength.EVIDENCE - 1, emitted=4, seconds=0.011)
    assert length.k == DraftLength.START  # slower, but too few drafts to tell
    length.update(accepted=0, drafted=16, emitted=4, seconds=0.011)  # none kept of 47: judged at once
    assert length.k == 0 and length.lockstep(padded=False)
    for _ in range(DraftLength.PAUSE):
        length.update(accepted=0, drafted=0, emitted=4, seconds=0.010)
    length.update(accepted=1, drafted=16, emitted=5, seconds=0.011)  # 1 of 63 kept; 455 tokens/s: it goes on
    assert length.k == DraftLength.START and length.lockstep(padded=False)
    length.update(accepted=0, drafted=16, emitted=4, seconds=0.013)  # the look falls to 375 tokens/s
    assert length.k == 0 and length.paused == 2 * DraftLength.PAUSE
    often = DraftLength("auto", free=True)  # a fifth of the drafts kept: a look is judged after LOOK rounds
    for _ in range(DraftLength.PLAIN_FIRST):
        often.update(accepted=0, drafted=0, emitted=4, seconds=0.010)
    often.update(accepted=8, drafted=5 * 8, emitted=12, seconds=0.040)  # 300 tokens/s
    assert often.k == DraftLength.START and not often.lockstep(padded=False)
    model = DraftLength("auto")  # a draft model is not presumed wrong
    model.update(accepted=0, drafted=4, emitted=4, seconds=0.011)
    assert not model.lockstep(padded=False)


def test_paced_prompt_lookup_stays_exact_and_drafts_less():
    target, greedy = gpt(0), Sampling(max_new_tokens=48, temperature=0)  # within the 64-token window
    prompts = [[1, 2, 3, 1, 2, 3, 1, 2], [4, 5, 6, 7, 8, 9]]
    fixed, fixed_stats = speculative_generate(target, LookupDrafter(), prompts, greedy,
                                              draft_tokens=4)
    auto, auto_stats = speculative_generate(target, LookupDrafter(), prompts, greedy,
                                            draft_tokens="auto")
    assert auto == fixed == generate(target, prompts, greedy)
    assert auto_stats.drafted < fixed_stats.drafted  # at least its first, plain rounds drafted nothing
