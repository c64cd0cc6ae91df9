"""The compiled decode step: a static KV cache (fixed shapes while decoding) gives the tokens of
the growing cache, greedy and beam search, and the step compiles once per batch and bucket, not
once per prompt length or per token. Dynamo's CompileCounter stands in for inductor (it traces
the same graph and counts it, in a fraction of the time); one slow test runs inductor itself."""

import sys

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from attnlab.checkpoint import save_checkpoint
from attnlab.cli import main
from attnlab.inference import BeamSearch, Sampling, causal_beam_search, generate
from attnlab.layers import KVCache, StaticKVCache
from attnlab.models import GPTConfig, TransformerXLConfig, build_model
from attnlab.models.mamba import MambaConfig
from attnlab.tokenizers import CharTokenizer

steps_module = sys.modules["attnlab.inference.generate"]
GPT = dict(vocab_size=40, max_seq_len=48, n_layer=2, n_head=4, d_model=32)
MODELS = {
    "gpt-learned": lambda: GPTConfig(**GPT),
    "gpt-rotary-gqa": lambda: GPTConfig(**GPT, n_kv_head=2, position="rotary", norm="rmsnorm", activation="swiglu",
                                        bias=False),
    # the recurrent state is already of fixed shapes, and generation may run past max_seq_len
    "mamba": lambda: MambaConfig(vocab_size=40, max_seq_len=16, n_layer=2, d_model=32, d_state=8),
}
PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11, 12, 13, 14, 15]]


def model_of(config):
    torch.manual_seed(0)
    return build_model(config).eval()


@pytest.fixture
def counter(monkeypatch):
    """Compile the decode step with a counting backend; -> the counter (frame_count = graphs)."""
    torch._dynamo.reset()
    counting = CompileCounter()
    step = torch.compile(steps_module._decode_step, backend=counting, fullgraph=True, dynamic=False)
    monkeypatch.setattr(steps_module, "compiled_decode_step", lambda: step)
    yield counting
    torch._dynamo.reset()


def greedy(n, compile=False):
    return Sampling(max_new_tokens=n, temperature=0, compile=compile)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_compiled_static_path_gives_the_eager_tokens_greedy_and_beam(name, counter):
    model = model_of(MODELS[name]())
    assert generate(model, PROMPTS, greedy(12, compile=True)) == generate(model, PROMPTS, greedy(12))
    eager = causal_beam_search(model, PROMPTS, BeamSearch(num_beams=3, max_new_tokens=8, num_return=2))
    compiled = causal_beam_search(model, PROMPTS, BeamSearch(num_beams=3, max_new_tokens=8, num_return=2, compile=True))
    assert [[h.tokens for h in hyps] for hyps in compiled] == [[h.tokens for h in hyps] for hyps in eager]
    assert [h.score for hyps in compiled for h in hyps] == pytest.approx([h.score for hyps in eager for h in hyps])
    assert counter.frame_count == 2  # batch 3 greedy, batch 9 beams: one graph each, reused at every step


def test_one_graph_for_every_prompt_length_in_a_bucket(counter):
    model = model_of(MODELS["gpt-learned"]())
    for length in (1, 4, 9, 20):  # prompt + 10 new tokens: all within the 48-token window, one bucket
        prompt = [[(7 * i) % 40 for i in range(length)]]
        assert generate(model, prompt, greedy(10, compile=True)) == generate(model, prompt, greedy(10))
    assert counter.frame_count == 1


def test_compiled_path_slides_past_the_window_like_the_eager_one(counter):
    model = model_of(MODELS["gpt-learned"]())  # 48-token window: 7 + 60 tokens restart the state past it
    assert generate(model, PROMPTS, greedy(60, compile=True)) == generate(model, PROMPTS, greedy(60))


@pytest.mark.parametrize("config", [GPTConfig(**GPT, attn_window=3),
                                    TransformerXLConfig(vocab_size=40, max_seq_len=48, segment_length=4, mem_len=48,
                                                        n_layer=2, n_head=2, d_model=32),
                                    MambaConfig(vocab_size=40, max_seq_len=48, n_layer=2, d_model=32, d_state=8,
                                                attn_layers=[1], n_head=2)], ids=["sliding", "xl", "mamba-hybrid"])
def test_families_without_a_static_state_decode_eagerly(config, counter):
    model = model_of(config)
    assert model.init_static_state(1, 8) is None
    assert generate(model, PROMPTS, greedy(6, compile=True)) == generate(model, PROMPTS, greedy(6))
    assert counter.frame_count == 0


def test_static_cache_keeps_its_shapes_and_the_protocol():
    cache = StaticKVCache(n_layer=1, capacity=8, batch=2)
    assert isinstance(cache, KVCache) and cache.length == 0 and cache.mask.shape == (2, 0)
    prompt = torch.tensor([[0, 1, 1], [1, 1, 1]])
    cache.begin(prompt, prompt)
    keys = torch.arange(2 * 3, dtype=torch.float).view(2, 1, 3, 1)
    k, _ = cache.append(0, keys, keys)  # a prompt: the columns in use
    assert k.shape == (2, 1, 3, 1) and cache.length == 3
    full = cache.begin(torch.ones(2, 1, dtype=torch.long))  # one token: every column
    k, _ = cache.append(0, torch.full((2, 1, 1, 1), 9.0), torch.full((2, 1, 1, 1), 9.0))
    assert full.shape == (2, 8) and k.shape == (2, 1, 8, 1) and cache.length == 4
    assert cache.mask.tolist() == [[0, 1, 1, 1], [1, 1, 1, 1]]
    assert k[:, 0, :4, 0].tolist() == [[0, 1, 2, 9], [3, 4, 5, 9]] and not k[:, :, 4:].any()
    cache.select(torch.tensor([1, 1]))  # same rows: same shapes, stale columns stay finite
    assert cache._keys[0].shape == (2, 1, 8, 1) and cache._keys[0][:, 0, :4, 0].tolist() == [[3, 4, 5, 9]] * 2
    assert cache.mask.tolist() == [[1, 1, 1, 1]] * 2
    cache.truncate(2)
    assert cache.length == 2 and cache.mask.tolist() == [[1, 1]] * 2
    with pytest.raises(ValueError, match="holds 8 tokens"):
        cache.append(0, torch.zeros(2, 1, 7, 1), torch.zeros(2, 1, 7, 1))


def test_generate_compile_flag_gives_the_eager_text(tmp_path, counter, capsys):
    model = model_of(GPTConfig(vocab_size=20, max_seq_len=32, n_layer=1, n_head=2, d_model=16))
    save_checkpoint(tmp_path / "ck", model, CharTokenizer("abcdefghijklmnopqrst"))
    for beams in ("1", "2"):
        outputs = []
        for flags in ([], ["--compile"]):
            assert main(["generate", str(tmp_path / "ck"), "--prompt", "abc", "--max-new-tokens", "8",
                         "--temperature", "0", "--beams", beams, *flags]) == 0
            outputs.append(capsys.readouterr().out)
        assert outputs[0] == outputs[1] and outputs[0].strip()
    assert counter.frame_count == 2  # greedy (1 row) and beams (2 rows)


@pytest.mark.slow
def test_inductor_compiled_step_gives_the_eager_tokens():
    """The real compiler (minutes on this CPU): greedy and beam tokens equal the eager ones."""
    torch._dynamo.reset()
    model = model_of(GPTConfig(vocab_size=64, max_seq_len=64, n_layer=2, n_head=2, d_model=32))
    assert generate(model, PROMPTS, greedy(16, compile=True)) == generate(model, PROMPTS, greedy(16))
    eager = causal_beam_search(model, PROMPTS, BeamSearch(num_beams=2, max_new_tokens=6))
    compiled = causal_beam_search(model, PROMPTS, BeamSearch(num_beams=2, max_new_tokens=6, compile=True))
    assert [h[0].tokens for h in compiled] == [h[0].tokens for h in eager]
