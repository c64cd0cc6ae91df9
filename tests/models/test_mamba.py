"""Mamba: Hugging Face parity (same weights in, same numbers out), the recurrent step against the
full forward with left-padded batches, generation and serving state, hybrids, interop."""

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from attnlab.checkpoint import load_checkpoint, save_checkpoint
from attnlab.compression import inject_lora, prune_magnitude, prune_structured, quantize_model
from attnlab.compression.lora import LoRALinear
from attnlab.compression.quantize import QuantizedLinear
from attnlab.compression.targets import find_linears
from attnlab.errors import UserError
from attnlab.inference import Sampling, generate
from attnlab.interop import export_hf, import_hf, load_hf_state
from attnlab.models import build_model
from attnlab.models.mamba import MambaConfig

transformers = pytest.importorskip("transformers")

SIZES = dict(vocab_size=97, d_model=32, n_layer=2, d_state=8, d_conv=4, expand=2, dt_rank=3, norm_eps=1e-5)


def hf_config(**extra):
    return transformers.MambaConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, state_size=8, conv_kernel=4,
                                    expand=2, time_step_rank=3, layer_norm_epsilon=1e-5, use_cache=False, **extra)


def hf_pair(hf_class, **extra):
    torch.manual_seed(0)
    theirs = hf_class(hf_config(**extra)).eval()
    with torch.no_grad():  # Hugging Face initialises D to ones and conv biases to zero: make them count
        for name, p in theirs.named_parameters():
            if name.endswith((".D", "conv1d.bias", "norm.weight", "norm_f.weight")):
                p.normal_(1.0 if "norm" in name or name.endswith(".D") else 0.0, 0.3)
    bias = extra.get("use_bias", False)
    ours = build_model(MambaConfig(bias=bias, **SIZES)).eval()
    load_hf_state(ours, "mamba", theirs.state_dict())
    return ours, theirs


def ids(rows=2, length=21, seed=1):
    return torch.randint(0, 97, (rows, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("scan", ["fused", "chunked", "sequential", "associative"])
def test_logits_match_hf_mamba_for_causal_lm(scan):
    ours, theirs = hf_pair(transformers.MambaForCausalLM)
    ours = build_model(dataclasses.replace(ours.config, scan=scan)).eval()
    load_hf_state(ours, "mamba", theirs.state_dict())
    x = ids()
    with torch.no_grad():
        diff = (ours(x).logits - theirs(x).logits).abs().max().item()
    assert diff <= 1e-5


def test_hidden_states_match_hf_mamba_model_with_biases_and_without_fp32_residual():
    ours, theirs = hf_pair(transformers.MambaModel, use_bias=True, residual_in_fp32=False)
    x = ids()
    with torch.no_grad():
        diff = (ours(x).hidden_states - theirs(x).last_hidden_state).abs().max().item()
    assert diff <= 1e-5


def test_left_padded_rows_match_hf_on_their_real_tokens():
    """Hugging Face masks padding the same way (zero inputs around the conv); with no biases in
    in_proj the two agree on every real token."""
    ours, theirs = hf_pair(transformers.MambaForCausalLM)
    x, mask = ids(), torch.ones(2, 21, dtype=torch.long)
    mask[1, :6] = 0
    with torch.no_grad():
        diff = (ours(x, attention_mask=mask).logits - theirs(x, attention_mask=mask).logits)[mask.bool()]
    assert diff.abs().max().item() <= 1e-5


def test_export_then_hf_loads_the_same_model(tmp_path):
    ours, theirs = hf_pair(transformers.MambaForCausalLM)
    export_hf(ours, tmp_path / "hf")
    loaded = transformers.MambaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    back, _ = import_hf(tmp_path / "hf")
    x = ids()
    with torch.no_grad():
        assert (loaded(x).logits - ours(x).logits).abs().max().item() <= 1e-5
        assert (back(x).logits - ours(x).logits).abs().max().item() == 0


@pytest.mark.parametrize("overrides", [dict(attn_layers=[1], n_head=2), dict(selective=False)])
def test_hybrids_and_the_ablation_refuse_export_in_one_line(overrides, tmp_path):
    model = build_model(MambaConfig(**SIZES, **overrides))
    with pytest.raises(UserError) as error:
        export_hf(model, tmp_path / "hf")
    assert "\n" not in str(error.value) and not (tmp_path / "hf").exists()


# -- the recurrent step against the full forward -----------------------------------------------

CONFIGS = {"mamba": {}, "hybrid": dict(attn_layers=[1], n_head=2), "ablation": dict(selective=False)}


def tiny(name, **extra):
    torch.manual_seed(0)
    return build_model(MambaConfig(**{**SIZES, "n_layer": 3}, **CONFIGS[name], **extra)).eval()


def left_padded(lengths, total, seed=2):
    x = ids(len(lengths), total, seed)
    mask = torch.zeros(len(lengths), total, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, total - n:] = 1
    return x.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize("name", CONFIGS)
@torch.no_grad()
def test_token_by_token_steps_equal_the_full_forward_with_left_padding(name):
    model = tiny(name)
    x, mask = left_padded([16, 9, 3], 16)
    full = model(x, attention_mask=mask).logits
    state = model.init_state(3, 16)
    steps = torch.cat([model(x[:, t:t + 1], attention_mask=mask[:, t:t + 1], state=state).logits
                       for t in range(16)], dim=1)
    real = mask.bool()
    assert (steps - full)[real].abs().max().item() <= 1e-5
    for row, n in enumerate([16, 9, 3]):  # each padded row equals the row alone
        alone = model(x[row:row + 1, 16 - n:]).logits[0]
        assert (full[row, 16 - n:] - alone).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", CONFIGS)
@torch.no_grad()
def test_prefill_then_steps_continue_the_state_like_one_forward(name):
    model = tiny(name)
    x, mask = left_padded([12, 7], 12)
    more = ids(2, 5, seed=3)
    whole = model(torch.cat([x, more], 1), attention_mask=torch.cat([mask, torch.ones_like(more)], 1)).logits[:, 12:]
    state = model.init_state(2, 4)
    model(x, attention_mask=mask, state=state)
    chunk = model(more[:, :2], state=state).logits
    steps = [model(more[:, t:t + 1], state=state).logits for t in range(2, 5)]
    assert (torch.cat([chunk, *steps], 1) - whole).abs().max().item() <= 1e-5


@torch.no_grad()
def test_the_state_selects_and_extends_rows_and_stays_fixed_in_size():
    model = tiny("mamba")
    a, b = ids(1, 7, seed=4), ids(1, 3, seed=5)
    state_a, state_b = model.init_state(1, 8), model.init_state(1, 8)
    model(a, state=state_a)
    model(b, state=state_b)
    state_a.extend(state_b)
    assert state_a.recurrent and state_a.length == 0
    sizes = [t.numel() for t in state_a.conv + state_a.ssm]
    token = torch.tensor([[5], [6]])
    joined = model(token, state=state_a).logits
    for row, (prompt, tok) in enumerate([(a, 5), (b, 6)]):
        alone = model(torch.cat([prompt, torch.tensor([[tok]])], 1)).logits[:, -1:]
        assert (joined[row] - alone[0]).abs().max().item() <= 1e-5
    for _ in range(20):
        model(token, state=state_a)
    assert [t.numel() for t in state_a.conv + state_a.ssm] == sizes
    state_a.select(torch.tensor([1, 1, 0]))
    assert state_a.ssm[0].size(0) == 3 and state_a.mask.shape == (3, 0)


def test_generation_runs_past_the_training_context():
    model = tiny("mamba", max_seq_len=16)
    greedy = Sampling(max_new_tokens=40, temperature=0)
    prompts = [[5, 9, 2, 7, 1], [4, 6]]
    out = generate(model, prompts, greedy)
    assert all(len(row) == 40 for row in out)
    assert out == [generate(model, [p], greedy)[0] for p in prompts]


@pytest.mark.parametrize("bad", [dict(attn_layers=[5]), dict(scan="fft"), dict(d_state=0), dict(attn_layers="1")])
def test_bad_configs_are_one_line(bad):
    with pytest.raises(UserError) as error:
        MambaConfig(**{**SIZES, **bad})
    assert "\n" not in str(error.value)


def test_a_distillation_student_keeps_the_attention_layers_it_takes():
    config = MambaConfig(**{**SIZES, "n_layer": 4}, attn_layers=[1, 3], n_head=2)
    assert config.with_depth([0, 3]).attn_layers == [1]
    assert config.with_depth([0, 2]).attn_layers is None


# -- compression reaches in_proj, x_proj, dt_proj and out_proj -----------------------------------

PROJECTIONS = ("in_proj", "x_proj", "dt_proj", "out_proj")


@pytest.mark.parametrize("scheme", ["dynamic_int8", "int8"])
def test_quantisation_and_lora_reach_every_mixer_projection_and_reload(scheme, tmp_path):
    model = tiny("mamba")
    x = ids(2, 12)
    with torch.no_grad():
        before = model(x).logits
    quantized = quantize_model(copy.deepcopy(model), scheme)
    names = {n.rsplit(".", 1)[-1] for n, m in quantized.named_modules() if isinstance(m, QuantizedLinear)}
    assert names == set(PROJECTIONS) and len(find_linears(quantized)) == 0
    with torch.no_grad():
        after = quantized(x).logits
    assert F.cosine_similarity(after.flatten(), before.flatten(), dim=0) > 0.99
    save_checkpoint(tmp_path / "q", quantized)
    loaded, _ = load_checkpoint(tmp_path / "q")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, after, rtol=0, atol=1e-6)
    inject_lora(model, rank=2, targets="in,ssm,o")
    assert {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, LoRALinear)} == set(PROJECTIONS)


def test_magnitude_pruning_reaches_the_mixers_and_structured_pruning_refuses_in_one_line():
    model = tiny("mamba")
    masks = prune_magnitude(model, 0.5)
    assert len(masks) == 3 * len(PROJECTIONS)
    with pytest.raises(UserError, match="mamba family") as error:
        prune_structured(model, 0.5)
    assert "\n" not in str(error.value)
