"""Greedy, sampling and beam search for encoder-decoders: cached equals uncached, and the
token sequences equal Hugging Face `generate` with the same settings on the same weights."""

import pytest
import torch

from attnlab.errors import UserError
from attnlab.inference import Sampling
from attnlab.inference.seq2seq import BeamSearch, beam_search, seq2seq_generate
from attnlab.models import build_model, preset

from .seq2seq_helpers import hf_marian, hf_t5, twin

pytest.importorskip("transformers")

SOURCES = [[5, 9, 13, 7, 22, 1], [30, 4, 1], [8, 8, 17, 40, 2, 11, 19, 1], [12, 1]]
# HF T5 generate needs as many decoder layers as encoder layers (its cache is sized by num_layers)
MODELS = {"t5": lambda seed: hf_t5(seed=seed, decoder_layers=2), "marian": lambda seed: hf_marian(seed=seed)}


@pytest.fixture(scope="module", params=sorted(MODELS))
def pair(request, tmp_path_factory):
    hf = MODELS[request.param](seed=3)
    with torch.no_grad():  # make eos likely enough that beams finish at different lengths
        if request.param == "marian":
            hf.final_logits_bias[0, hf.config.eos_token_id] += 3.0
        else:
            hf.shared.weight[hf.config.eos_token_id] *= 3.0
    return hf, twin(hf, tmp_path_factory.mktemp(request.param))


def hf_batch(hf):
    longest = max(map(len, SOURCES))
    ids = torch.full((len(SOURCES), longest), hf.config.pad_token_id)
    mask = torch.zeros_like(ids)
    for row, source in enumerate(SOURCES):
        ids[row, :len(source)] = torch.tensor(source)
        mask[row, :len(source)] = 1
    return ids, mask


def hf_tokens(sequences, eos, n_new):
    rows = []
    for row in sequences.tolist():
        row = row[1:]
        rows.append(row[:row.index(eos)] if eos in row else row[:n_new])
    return rows


def test_greedy_matches_hugging_face(pair):
    hf, ours = pair
    ids, mask = hf_batch(hf)
    expected = hf_tokens(hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1,
                                     max_new_tokens=12), hf.config.eos_token_id, 12)
    got = seq2seq_generate(ours, SOURCES, Sampling(max_new_tokens=12, temperature=0))
    assert got == expected


@pytest.mark.parametrize("length_penalty,early_stopping", [(1.0, False), (2.0, True), (0.5, "never"),
                                                           (-1.0, False)])
def test_beam_search_matches_hugging_face(pair, length_penalty, early_stopping):
    hf, ours = pair
    ids, mask = hf_batch(hf)
    eos = hf.config.eos_token_id
    out = hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=4, max_new_tokens=12,
                      length_penalty=length_penalty, early_stopping=early_stopping, num_return_sequences=2,
                      output_scores=True, return_dict_in_generate=True)
    expected = hf_tokens(out.sequences, eos, 12)
    options = BeamSearch(num_beams=4, max_new_tokens=12, length_penalty=length_penalty,
                         early_stopping=early_stopping, num_return=2)
    got = beam_search(ours, SOURCES, options)
    assert [h.tokens for hyps in got for h in hyps] == expected
    assert torch.allclose(torch.tensor([h.score for hyps in got for h in hyps]), out.sequences_scores, atol=1e-4)
    assert any(len(tokens) < 12 for tokens in expected)  # some hypotheses ended with eos


@pytest.mark.parametrize("search", ["greedy", "sampled", "beam"])
def test_cached_equals_uncached(pair, search):
    _, ours = pair
    if search == "beam":
        run = lambda cache: [[h.tokens for h in hyps] for hyps in beam_search(  # noqa: E731
            ours, SOURCES, BeamSearch(num_beams=3, max_new_tokens=10, num_return=3, use_cache=cache))]
    else:
        temperature = 0 if search == "greedy" else 1.0
        run = lambda cache: seq2seq_generate(ours, SOURCES, Sampling(  # noqa: E731
            max_new_tokens=10, temperature=temperature, seed=7, use_cache=cache))
    assert run(True) == run(False)


def test_beam_of_one_is_greedy(pair):
    _, ours = pair
    greedy = seq2seq_generate(ours, SOURCES, Sampling(max_new_tokens=10, temperature=0))
    beams = beam_search(ours, SOURCES, BeamSearch(num_beams=1, max_new_tokens=10))
    assert [hyps[0].tokens for hyps in beams] == greedy


def test_bad_decoding_requests_are_user_errors():
    model = build_model(preset("transformer-tiny")).eval()
    with pytest.raises(UserError, match="longer than this model allows"):
        seq2seq_generate(model, [[5] * 129], Sampling(max_new_tokens=3, temperature=0))
    with pytest.raises(UserError, match="more than this model can produce"):
        beam_search(model, [[5, 1]], BeamSearch(max_new_tokens=500))
    with pytest.raises(UserError, match="num_return"):
        BeamSearch(num_beams=2, num_return=3)
    with pytest.raises(UserError, match="at least one token"):
        beam_search(model, [[]], BeamSearch())


@pytest.mark.parametrize("name", ["transformer-tiny", "t5-tiny"])
def test_cross_attention_keys_and_values_are_computed_once_per_source_in_beam_search(name):
    torch.manual_seed(0)
    model = build_model(preset(name)).eval()
    calls = {"k": [], "v": [], "q": []}  # rows of each call, per projection
    hooks = []
    for block in model.decoder_blocks:
        for key, module in (("k", block.cross_attn.k_proj), ("v", block.cross_attn.v_proj),
                            ("q", block.cross_attn.q_proj)):
            hooks.append(module.register_forward_hook(lambda _m, inputs, _o, key=key: calls[key].append(
                inputs[0].size(0))))
    sources, steps = [[5, 9, 13, 1], [30, 4, 1]], 6
    try:
        beam_search(model, sources, BeamSearch(num_beams=3, max_new_tokens=steps), stop_at_eos=False)
    finally:
        for hook in hooks:
            hook.remove()
    layers = model.n_decoder_layer
    assert calls["q"] == [len(sources) * 3] * (layers * steps)  # the queries run every step, for every beam
    # keys and values: once per layer over the whole search, on one row per source, not per beam
    assert calls["k"] == calls["v"] == [len(sources)] * layers
