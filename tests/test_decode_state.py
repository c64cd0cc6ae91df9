"""The decode-state protocol: every causal family decodes through its own state (KV cache,
Transformer-XL memory, or re-reading the window) and gets the tokens of a full recompute,
batched with left padding or alone; the KV cache's select / extend / trim; beam search for
causal LMs, token for token equal to Hugging Face `generate`."""

import pytest
import torch

from attnlab.inference import BeamSearch, Sampling, causal_beam_search, generate
from attnlab.inference.generate import left_pad
from attnlab.layers import HiddenMemory, KVCache, RecomputeState
from attnlab.models import GPTConfig, ReformerConfig, TransformerXLConfig, build_model

PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11, 12, 13, 14, 15]]
GPT = dict(vocab_size=40, max_seq_len=48, n_layer=2, n_head=4, d_model=32)
MODELS = {
    "gpt-learned": lambda: GPTConfig(**GPT),
    "gpt-rotary-gqa": lambda: GPTConfig(**GPT, n_kv_head=2, position="rotary", norm="rmsnorm", activation="swiglu",
                                        bias=False),
    "gpt-sliding-window": lambda: GPTConfig(**GPT, attn_window=3),
    # mem_len covers every test sequence, so token by token equals re-reading the window
    "transformer-xl": lambda: TransformerXLConfig(vocab_size=40, max_seq_len=48, segment_length=4, mem_len=48,
                                                  n_layer=2, n_head=2, d_model=32),
    # one local chunk covers the whole window, so left padding moves no chunk boundary
    "reformer": lambda: ReformerConfig(vocab_size=40, max_seq_len=32, n_layer=2, d_model=32, n_head=2, chunk_length=32,
                                       local_chunk_length=32, axial_shape=[4, 8], axial_dims=[16, 16],
                                       attn_layers=["local", "local"]),
}
STATE_KINDS = {"gpt-learned": KVCache, "gpt-rotary-gqa": KVCache, "gpt-sliding-window": KVCache,
               "transformer-xl": HiddenMemory, "reformer": RecomputeState}


def model_of(name):
    torch.manual_seed(0)
    return build_model(MODELS[name]()).eval()


def greedy(n):
    return Sampling(max_new_tokens=n, temperature=0)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_state_equals_recompute_and_batched_equals_alone(name):
    model = model_of(name)
    state = model.init_state(2, 8)
    assert isinstance(state, STATE_KINDS[name]) and state.mask.shape == (2, 0)
    assert state.recurrent == (name == "transformer-xl")
    with_state = generate(model, PROMPTS, greedy(12))
    recomputed = generate(model, PROMPTS, Sampling(max_new_tokens=12, temperature=0, use_cache=False))
    alone = [generate(model, [p], greedy(12))[0] for p in PROMPTS]
    assert with_state == recomputed == alone
    assert all(len(row) == 12 for row in with_state)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_state_logits_equal_the_full_forward_with_left_padding(name):
    """Prefill a left-padded batch, then feed a chunk of three (as speculative decoding verifies
    drafts), then tokens one at a time: each real position's logits equal those of the row's
    unpadded sequence read in one forward."""
    model = model_of(name)
    ids = torch.randint(1, 40, (2, 11))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # row 1: 4 columns of left padding
    state = model.init_state(2, 4)
    with torch.no_grad():
        logits = [model(ids[:, :6], attention_mask=mask[:, :6], state=state).logits,
                  model(ids[:, 6:9], state=state).logits]
        logits += [model(ids[:, t:t + 1], state=state).logits for t in range(9, 11)]
        stepped = torch.cat(logits, dim=1)
        assert state.length == 11 and state.mask[1, :4].sum() == 0
        for row, start in ((0, 0), (1, 4)):
            full = model(ids[row:row + 1, start:]).logits[0]
            torch.testing.assert_close(stepped[row, start:], full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_state_logits_equal_the_full_forward_fed_in_chunks_without_padding(name):
    """Without padding a KV cache asks for no mask and positions count on from its length: a prompt,
    a chunk of three (as speculative decoding verifies drafts), then single tokens, give the logits
    of one full forward."""
    model = model_of(name)
    ids = torch.randint(1, 40, (2, 11))
    state = model.init_state(2, 4)
    with torch.no_grad():
        chunks = [ids[:, :5], ids[:, 5:8], ids[:, 8:9], ids[:, 9:10], ids[:, 10:]]
        stepped = torch.cat([model(chunk, state=state).logits for chunk in chunks], dim=1)
        torch.testing.assert_close(stepped, model(ids).logits, atol=1e-5, rtol=1e-5)
    assert not getattr(state, "padded", False)


def test_transformer_xl_carries_its_memory_across_segments_and_past_the_window():
    config = TransformerXLConfig(vocab_size=40, max_seq_len=16, segment_length=4, mem_len=16, n_layer=2, n_head=2,
                                 d_model=32)
    torch.manual_seed(0)
    model = build_model(config).eval()
    ids = torch.randint(0, 40, (2, 14))  # 14 tokens: three and a half segments
    state = model.init_state(2, 16)
    with torch.no_grad():
        after_prompt = model(ids, state=state, only_last=True).logits[:, -1]
        torch.testing.assert_close(after_prompt, model(ids).logits[:, -1], atol=1e-5, rtol=1e-5)
        assert state.length == 14 and len(state.memory) == 2 and state.memory[0].shape == (2, 14, 32)
    # past max_seq_len the memory (fixed in size) goes on: tokens equal stepping with memory= by hand
    prompt = ids[0].tolist()
    tokens = generate(model, [prompt], greedy(30))[0]
    assert len(tokens) == 30
    with torch.no_grad():
        out = model(ids[:1])
        expected = []
        for _ in range(30):
            expected.append(int(out.logits[0, -1].argmax()))
            out = model(torch.tensor([[expected[-1]]]), memory=out.memory)
    assert tokens == expected


def test_a_prompt_longer_than_the_window_is_refused_unless_the_state_is_recurrent():
    from attnlab.errors import UserError
    xl = model_of("transformer-xl")
    assert len(generate(xl, [list(range(1, 40)) * 2], greedy(3))[0]) == 3
    with pytest.raises(UserError, match="context window of 48"):
        generate(model_of("gpt-learned"), [list(range(1, 40)) * 2], greedy(3))


# -- the KV cache: select, extend, trim -----------------------------------------------------------
def filled_cache(batch, masks, capacity=2):
    """A one-layer cache whose key at row b, column j is 100 * b + j + 1 (values: the negative)."""
    cache = KVCache(1, capacity, batch=batch)
    length = masks.size(1)
    k = (100 * torch.arange(batch)[:, None] + torch.arange(length)[None, :] + 1).float()[:, None, :, None]
    cache.begin(masks, masks)
    cache.append(0, k, -k)
    return cache


def keys_of(cache):
    k, v = cache._keys[0][:, :, :cache.length], cache._values[0][:, :, :cache.length]
    assert torch.equal(v, -k)
    return k[:, 0, :, 0]


def test_kv_cache_doubles_its_buffers_when_full():
    cache = filled_cache(1, torch.ones(1, 3, dtype=torch.long), capacity=4)
    buffers = cache._keys[0]
    cache.begin(torch.ones(1, 1, dtype=torch.long))  # one real token
    cache.append(0, torch.ones(1, 1, 1, 1), -torch.ones(1, 1, 1, 1))
    assert cache._keys[0] is buffers  # the fourth column fits
    cache.begin(torch.ones(1, 1, dtype=torch.long))  # one real token
    cache.append(0, torch.ones(1, 1, 1, 1), -torch.ones(1, 1, 1, 1))
    assert cache.capacity == 8 and cache._keys[0].size(2) == 8  # not 5: one copy per doubling, not per token
    assert keys_of(cache).tolist() == [[1, 2, 3, 1, 1]]


def test_kv_cache_select_reorders_values_and_mask():
    mask = torch.tensor([[0, 1, 1], [1, 1, 1], [0, 0, 1]])
    cache = filled_cache(3, mask)
    cache.select(torch.tensor([2, 0, 0]))
    assert torch.equal(cache.mask, mask[[2, 0, 0]])
    assert keys_of(cache).tolist() == [[201, 202, 203], [1, 2, 3], [1, 2, 3]]


def test_kv_cache_extend_right_aligns_both_and_trim_drops_shared_padding():
    short = filled_cache(1, torch.tensor([[1, 1]]))
    long = filled_cache(2, torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]]), capacity=8)
    short.extend(long)
    assert short.length == 4 and short.capacity == 8
    assert short.mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]]
    assert keys_of(short).tolist() == [[0, 0, 1, 2], [1, 2, 3, 4], [101, 102, 103, 104]]
    short.select(torch.tensor([2, 0]))  # the row that used column 0 leaves
    short.trim()
    assert short.mask.tolist() == [[1, 1, 1], [0, 1, 1]]
    assert keys_of(short).tolist() == [[102, 103, 104], [0, 1, 2]]
    k = torch.full((2, 1, 1, 1), 7.0)
    short.append(0, k, -k)  # appending goes on after the trimmed columns
    assert short.length == 4 and keys_of(short)[:, -1].tolist() == [7, 7]


def test_kv_cache_knows_when_it_holds_padding():
    """While no column is padding, `begin` returns no mask to apply. Padding comes with a padded
    prompt, rows truncated to different lengths or joined at different lengths, and goes once
    `trim` has dropped it."""
    step = torch.ones(2, 1, dtype=torch.long)
    k = torch.ones(2, 1, 1, 1)
    cache = filled_cache(2, torch.ones(2, 3, dtype=torch.long))
    assert not cache.padded and cache.begin(step) is None
    cache.append(0, k, -k)
    cache.truncate(torch.tensor([4, 2]))
    assert cache.padded and cache.begin(step).tolist() == [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]
    cache.append(0, k, -k)
    cache.select(torch.tensor([1]))
    cache.trim()
    assert not cache.padded and cache.mask.tolist() == [[1, 1, 1]]
    cache.extend(filled_cache(1, torch.ones(1, 2, dtype=torch.long)))
    assert cache.padded and cache.mask.tolist() == [[1, 1, 1], [0, 1, 1]]
    assert filled_cache(1, torch.tensor([[0, 1]])).padded


def test_kv_cache_refuses_to_extend_cross_attention():
    cache, other = KVCache(1, batch=1), KVCache(1, batch=1)
    cache.set_cross(0, torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4))
    with pytest.raises(ValueError, match="cross-attention"):
        cache.extend(other)


@pytest.mark.parametrize("name", ["gpt-rotary-gqa", "transformer-xl", "reformer"])
def test_extended_states_decode_each_row_as_alone(name):
    """Prefill two prompts apart, join their states, select, trim: every row's next logits equal
    those of its own sequence."""
    model = model_of(name)
    a, b = torch.randint(1, 40, (1, 3)), torch.randint(1, 40, (1, 7))
    with torch.no_grad():
        state, other = model.init_state(1, 4), model.init_state(1, 4)
        model(a, state=state)
        model(b, state=other)
        state.extend(other)
        assert state.mask.tolist() == [[0, 0, 0, 0, 1, 1, 1], [1] * 7]
        step = torch.tensor([[5], [6]])
        logits = model(step, state=state).logits[:, -1]
        torch.testing.assert_close(logits[0], model(torch.cat([a, step[:1]], 1)).logits[0, -1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logits[1], model(torch.cat([b, step[1:]], 1)).logits[0, -1], atol=1e-5, rtol=1e-5)
        state.select(torch.tensor([0]))
        state.trim()
        assert state.mask.tolist() == [[1, 1, 1, 1]]
        again = model(torch.tensor([[9]]), state=state).logits[0, -1]
        torch.testing.assert_close(again, model(torch.cat([a, step[:1], torch.tensor([[9]])], 1)).logits[0, -1],
                                   atol=1e-5, rtol=1e-5)



@pytest.mark.parametrize("name", ["gpt-learned", "gpt-sliding-window", "reformer"])
def test_truncating_each_row_to_its_own_length_keeps_exactly_those_tokens(name):
    """Speculative decoding's rewind: three rows take four more tokens, then keep 1, 4 and 2 of them
    (right-aligned again); each row's next logits are those of its own kept sequence."""
    model = model_of(name)
    ids, mask = left_pad(PROMPTS)
    drafted, kept, step = torch.randint(1, 40, (3, 4)), torch.tensor([1, 4, 2]), torch.tensor([[5], [6], [7]])
    with torch.no_grad():
        state = model.init_state(3, 8)
        model(ids, attention_mask=mask, state=state)
        start = state.length
        model(drafted, state=state)
        state.truncate(start + kept)
        assert state.mask.sum(1).tolist() == [len(p) + k for p, k in zip(PROMPTS, kept.tolist())]
        logits = model(step, state=state).logits[:, -1]
        for row, prompt in enumerate(PROMPTS):
            alone = torch.cat([torch.tensor([prompt]), drafted[row:row + 1, :kept[row]], step[row:row + 1]], 1)
            torch.testing.assert_close(logits[row], model(alone).logits[0, -1], atol=1e-5, rtol=1e-5)

# -- beam search for causal LMs --------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpt2_pair(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    from attnlab.interop import import_hf
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4, bos_token_id=0,
                                     eos_token_id=3, pad_token_id=0)
    hf = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # large weights (varied continuations) and a likely eos, so beams end at different lengths
        for p in hf.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
        hf.transformer.wte.weight[3] *= 4.0
    directory = tmp_path_factory.mktemp("gpt2")
    hf.save_pretrained(directory)
    ours, _ = import_hf(directory, with_tokenizer=False)
    return hf, ours


def hf_beams(hf, prompts, n_new, **options):
    longest = max(map(len, prompts))
    ids = torch.zeros(len(prompts), longest, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, longest - len(prompt):] = torch.tensor(prompt)
        mask[row, longest - len(prompt):] = 1
    out = hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=n_new,
                      return_dict_in_generate=True, output_scores=True, **options)
    rows = [row[longest:] for row in out.sequences.tolist()]
    return [row[:row.index(3)] if 3 in row else row for row in rows], out.sequences_scores


@pytest.mark.parametrize("length_penalty,early_stopping", [(1.0, False), (2.0, True), (0.5, "never"),
                                                           (-1.0, False)])
def test_causal_beam_search_matches_hugging_face(gpt2_pair, length_penalty, early_stopping):
    hf, ours = gpt2_pair
    prompts = [[5, 9, 13, 7, 22], [30, 4], [8, 8, 17, 40, 2, 11, 19], [12]]
    expected, scores = hf_beams(hf, prompts, 10, num_beams=4, num_return_sequences=2, length_penalty=length_penalty,
                                early_stopping=early_stopping, eos_token_id=3, pad_token_id=0)
    got = causal_beam_search(ours, prompts, BeamSearch(num_beams=4, max_new_tokens=10, length_penalty=length_penalty,
                                                       early_stopping=early_stopping, num_return=2), eos_id=3)
    assert [h.tokens for hyps in got for h in hyps] == expected
    torch.testing.assert_close(torch.tensor([h.score for hyps in got for h in hyps]), scores, atol=1e-4, rtol=1e-4)
    assert any(len(tokens) < 10 for tokens in expected)  # some hypotheses ended with eos


@pytest.mark.parametrize("name", sorted(MODELS))
def test_causal_beam_search_runs_for_every_family_best_first(name):
    model = model_of(name)
    options = dict(num_beams=3, max_new_tokens=6, num_return=3)
    beams = causal_beam_search(model, PROMPTS, BeamSearch(**options))
    for hyps in beams:
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True) and len(hyps) == 3
        assert all(len(h.tokens) == 6 for h in hyps)  # no eos: every hypothesis runs to the end
    recomputed = causal_beam_search(model, PROMPTS, BeamSearch(**options, use_cache=False))
    assert [[h.tokens for h in hyps] for hyps in beams] == [[h.tokens for h in hyps] for hyps in recomputed]
    assert [hyps[0].tokens for hyps in causal_beam_search(model, PROMPTS, BeamSearch(num_beams=1, max_new_tokens=6))] \
        == generate(model, PROMPTS, greedy(6))
    alone = [causal_beam_search(model, [p], BeamSearch(**options))[0] for p in PROMPTS]
    assert [[h.tokens for h in hyps] for hyps in beams] == [[h.tokens for h in hyps] for hyps in alone]


def test_causal_beam_search_slides_past_a_non_recurrent_window():
    """Past max_seq_len the state restarts on the last window of each beam's own tokens."""
    model = model_of("gpt-learned")
    prompts = [list(range(1, 40)) + [5, 6, 7, 8, 9], [3, 4]]  # 44 of 48 tokens
    options = dict(num_beams=3, max_new_tokens=10, num_return=2)
    cached = [h for hyps in causal_beam_search(model, prompts, BeamSearch(**options)) for h in hyps]
    recomputed = [h for hyps in causal_beam_search(model, prompts, BeamSearch(**options, use_cache=False)) for h in hyps]
    assert [h.tokens for h in cached] == [h.tokens for h in recomputed]
    assert [h.score for h in cached] == pytest.approx([h.score for h in recomputed], abs=1e-5)
    assert all(len(h.tokens) == 10 for h in cached)
