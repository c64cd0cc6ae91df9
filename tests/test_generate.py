import pytest
import torch

from attnlab.errors import UserError
from attnlab.inference import Sampling, generate, generate_text, next_token, stream_text
from attnlab.inference.generate import sample
from attnlab.models import GPTConfig, build_model
from attnlab.tokenizers import CharTokenizer

PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11, 12, 13, 14, 15]]


@pytest.fixture(params=["gpt2", "llama"])
def model(request):
    extra = {"llama": {"norm": "rmsnorm", "activation": "swiglu", "position": "rotary", "bias": False}}.get(request.param, {})
    return build_model(GPTConfig(vocab_size=40, max_seq_len=48, n_layer=2, n_head=2, d_model=32, **extra)).eval()


def test_cached_greedy_equals_full_recompute_and_batch_equals_alone(model):
    cached = generate(model, PROMPTS, Sampling(max_new_tokens=30, temperature=0))
    recomputed = generate(model, PROMPTS, Sampling(max_new_tokens=30, temperature=0, use_cache=False))
    alone = [generate(model, [p], Sampling(max_new_tokens=30, temperature=0))[0] for p in PROMPTS]
    assert cached == recomputed == alone
    assert all(len(row) == 30 for row in cached)


def test_sampling_is_reproducible_with_a_seed_and_same_with_or_without_cache(model):
    sampling = dict(max_new_tokens=25, temperature=1.0, top_k=8, top_p=0.9, seed=7)
    first = generate(model, PROMPTS, Sampling(**sampling))
    assert first == generate(model, PROMPTS, Sampling(**sampling))
    assert first == generate(model, PROMPTS, Sampling(**sampling, use_cache=False))
    assert first != generate(model, PROMPTS, Sampling(**{**sampling, "seed": 8}))


def test_generation_slides_past_the_context_window(model):
    prompt = [list(range(1, 40))]
    cached = generate(model, prompt, Sampling(max_new_tokens=20, temperature=0))
    recomputed = generate(model, prompt, Sampling(max_new_tokens=20, temperature=0, use_cache=False))
    assert cached == recomputed and len(cached[0]) == 20


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]]).repeat(2000, 1)
    top2 = next_token(logits, Sampling(temperature=1.0, top_k=2), torch.Generator().manual_seed(0))
    assert set(top2.tolist()) == {0, 1}
    probs = logits[0].softmax(-1)  # 0.64, 0.24, 0.09, ...: top-p 0.8 keeps the first two
    assert probs[0] < 0.8 < probs[0] + probs[1]
    nucleus = next_token(logits, Sampling(temperature=1.0, top_p=0.8), torch.Generator().manual_seed(0))
    assert set(nucleus.tolist()) == {0, 1}
    assert (next_token(logits, Sampling(temperature=0)) == 0).all()


def test_draws_follow_the_probabilities_and_never_pick_an_impossible_token():
    """200,000 draws from rows with zeros at both ends and in the middle, unnormalised."""
    torch.manual_seed(0)
    probs = torch.rand(4, 9).pow(3) * torch.tensor([0, 1, 1, 1, 0, 1, 1, 1, 0])
    probs[1] *= 1e-6  # a row's total need not be 1
    rows = probs.repeat(50_000, 1)
    drawn = sample(rows, torch.Generator().manual_seed(1)).view(50_000, 4)
    for row in range(4):
        frequencies = torch.bincount(drawn[:, row], minlength=9).double() / 50_000
        expected = (probs[row] / probs[row].sum()).double()
        assert 0.5 * (frequencies - expected).abs().sum() < 0.01 and not frequencies[expected == 0].any()
    one_hot = torch.zeros(3, 7).index_fill_(1, torch.tensor([6]), 1.0)  # all the mass on the last token
    assert sample(one_hot).tolist() == [6, 6, 6]


@pytest.mark.parametrize("temperature", [5e-324, 1e-40])
def test_a_tiny_temperature_samples_the_best_token(temperature):
    logits = torch.tensor([[4.0, 3.0, 9.0, 1.0], [-2.0, 7.0, 0.0, 1.0]])
    picked = next_token(logits, Sampling(temperature=temperature), torch.Generator().manual_seed(0))
    assert picked.tolist() == [2, 1]


def test_eos_stops_a_row_and_is_not_returned(model):
    first = generate(model, PROMPTS, Sampling(max_new_tokens=10, temperature=0))
    eos = first[0][3]
    rows = generate(model, PROMPTS, Sampling(max_new_tokens=10, temperature=0), eos_id=eos)
    assert rows[0] == first[0][:first[0].index(eos)]


def test_stop_strings_and_streaming(model):
    tokenizer = CharTokenizer([chr(ord("a") + i) for i in range(26)] + list("0123456789 .,?"))
    sampling = Sampling(max_new_tokens=30, temperature=0)
    full = generate_text(model, tokenizer, ["abc", "hello"], sampling)
    streamed = ["", ""]
    for pieces in stream_text(model, tokenizer, ["abc", "hello"], sampling):
        streamed = [s + p for s, p in zip(streamed, pieces)]
    assert streamed == full and all(len(t) == 30 for t in full)
    stop = full[0][5:7]
    cut = generate_text(model, tokenizer, ["abc", "hello"], sampling, stop=[stop])
    assert cut[0] == full[0][:full[0].index(stop)]
    assert stop not in cut[0]


def test_bad_generation_requests_are_clear_errors(model):
    with pytest.raises(UserError, match="exceeds the model's context window of 48"):
        generate(model, [list(range(49))], Sampling())
    with pytest.raises(UserError, match="at least one token"):
        generate(model, [[]], Sampling())
    with pytest.raises(UserError, match="top_p"):
        Sampling(top_p=1.5)
    with pytest.raises(UserError, match="max_new_tokens"):
        Sampling(max_new_tokens=-1)


@pytest.mark.parametrize("position", ["axial", "rotary"])
def test_left_padding_does_not_shift_reformer_positions(position):
    """Models that take position_ids from the caller (here the Reformer, whose one local chunk
    covers the whole sequence, so attention is plain causal) generate the same batched as alone.
    With rotary positions only distances count, so this checks the padding mask alone."""
    from attnlab.models import ReformerConfig
    config = ReformerConfig(vocab_size=40, max_seq_len=32, n_layer=2, d_model=32, n_head=2, chunk_length=32,
                            local_chunk_length=32, axial_shape=[4, 8], axial_dims=[16, 16], dropout=0.0,
                            attn_layers=["local", "local"], position=position)
    reformer = build_model(config).eval()
    batched = generate(reformer, PROMPTS, Sampling(max_new_tokens=10, temperature=0))
    assert batched == [generate(reformer, [p], Sampling(max_new_tokens=10, temperature=0))[0] for p in PROMPTS]
