import pytest
import torch

from attnlab.errors import UserError
from attnlab.layers import KVCache
from attnlab.models import GPT, GPTConfig, PRESETS, build_model, preset


def tiny(**overrides):
    return GPTConfig(**{"vocab_size": 37, "max_seq_len": 32, "n_layer": 2, "n_head": 4, "d_model": 32, **overrides})


STYLES = {
    "gpt2": {},
    "llama": {"norm": "rmsnorm", "activation": "swiglu", "position": "rotary", "bias": False, "tie_weights": False,
              "n_kv_head": 2},
    "sinusoidal": {"position": "sinusoidal", "activation": "relu"},
}


@pytest.mark.parametrize("bad, message", [
    ({"d_model": 30, "n_head": 4}, "divisible by n_head"),
    ({"n_layer": 0}, "n_layer must be a positive integer"),
    ({"vocab_size": -5}, "vocab_size must be a positive integer"),
    ({"norm": "batchnorm"}, "norm='batchnorm' is not one of"),
    ({"activation": "tanh"}, "activation='tanh' is not one of"),
    ({"position": "alibi"}, "position='alibi' is not one of"),
    ({"dropout": 1.5}, "dropout must be in"),
    ({"n_kv_head": 3}, "divisible by n_kv_head"),
])
def test_bad_config_is_one_clear_error(bad, message):
    with pytest.raises(UserError, match=message):
        tiny(**bad)


def test_unknown_config_field_and_preset_are_named():
    with pytest.raises(UserError, match="unknown field.*n_layers"):
        GPTConfig.from_dict({"n_layers": 3})
    with pytest.raises(UserError, match="unknown preset 'gpt5'"):
        preset("gpt5")


def test_presets_describe_gpt2_and_llama_styles():
    small = PRESETS["gpt2-small"]
    assert (small.n_layer, small.d_model, small.position, small.norm) == (12, 768, "learned", "layernorm")
    llama = PRESETS["llama-7b"]
    assert (llama.position, llama.norm, llama.activation, llama.ffn_size) == ("rotary", "rmsnorm", "swiglu", 11008)
    assert build_model(preset("gpt2-nano", vocab_size=65)).num_parameters() > 0


def test_gpt2_small_preset_has_the_known_parameter_count():
    with torch.device("meta"):
        model = build_model(PRESETS["gpt2-small"])
    assert model.num_parameters() == 124_439_808  # GPT-2 small with tied embeddings


def test_weight_tying_shares_one_tensor():
    model = build_model(tiny())
    assert model.lm_head.weight is model.tok_emb.weight
    untied = build_model(tiny(tie_weights=False))
    assert untied.lm_head.weight is not untied.tok_emb.weight


@pytest.mark.parametrize("style", STYLES)
def test_kv_cache_gives_the_logits_of_a_full_recompute(style):
    model = build_model(tiny(**STYLES[style])).eval()
    ids = torch.randint(0, 37, (2, 20))
    full = model(ids).logits
    state = model.init_state(2, capacity=4)  # small capacity: exercises the buffer growth
    assert isinstance(state, KVCache)
    steps = [model(ids[:, :5], state=state).logits]
    for t in range(5, 20):
        steps.append(model(ids[:, t:t + 1], state=state).logits)
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


def test_kv_cache_select_moves_rows_and_then_keeps_growing():
    """Beam search reorders the cache (only the filled positions are copied), then appends."""
    model = build_model(tiny()).eval()
    ids = torch.randint(0, 37, (3, 6))
    state = model.init_state(3, capacity=5)
    rows = torch.tensor([2, 0, 2])
    with torch.no_grad():
        model(ids[:, :5], state=state)
        state.select(rows)
        stepped = model(ids[rows, 5:6], state=state).logits[:, -1]
    assert torch.allclose(stepped, model(ids[rows]).logits[:, -1], atol=1e-5)


@pytest.mark.parametrize("style", STYLES)
def test_left_padding_does_not_change_a_sequence(style):
    model = build_model(tiny(**STYLES[style])).eval()
    ids = torch.randint(1, 37, (1, 9))
    alone = model(ids).logits
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 9, dtype=torch.long)], dim=1)
    out = model(padded, attention_mask=mask).logits[:, 4:]
    assert torch.allclose(out, alone, atol=1e-5)


def test_gradients_match_finite_differences_in_float64():
    model = build_model(tiny(n_layer=1, d_model=8, n_head=2, vocab_size=11, max_seq_len=6, **STYLES["llama"])).double()
    ids = torch.randint(0, 11, (1, 6))
    weight = model.blocks[0].self_attn.q_proj.weight

    def loss_of(w):
        with torch.no_grad():
            weight.copy_(w)
        return model(ids, targets=ids).loss

    w0 = weight.detach().clone()
    loss_of(w0).backward()
    analytic = weight.grad.clone()
    eps = 1e-6
    for index in [(0, 0), (3, 5), (7, 2)]:
        plus, minus = w0.clone(), w0.clone()
        plus[index] += eps
        minus[index] -= eps
        numeric = (loss_of(plus).item() - loss_of(minus).item()) / (2 * eps)
        assert abs(numeric - analytic[index].item()) < 1e-6 * max(1.0, abs(numeric)) + 1e-8


def test_gradcheck_on_attention_and_block():
    from attnlab.layers import TransformerBlock

    block = TransformerBlock(8, 2, 16, norm="rmsnorm", ffn_kind="swiglu").double()
    x = torch.randn(1, 4, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: block(inp, causal=True), (x,))


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_a_tiny_model_overfits_one_batch(style):
    model = build_model(tiny(**STYLES[style]))
    ids = torch.randint(0, 37, (4, 17))
    inputs, targets = ids[:, :-1], ids[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = model(inputs, targets=targets).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05


def test_sequence_longer_than_the_block_is_refused():
    model = build_model(tiny())
    with pytest.raises(ValueError, match="exceeds max_seq_len 32"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_loss_ignores_minus_100_targets():
    model = build_model(tiny())
    ids = torch.randint(0, 37, (1, 8))
    targets = ids.clone()
    targets[:, 4:] = -100
    full = model(ids[:, :4], targets=ids[:, :4]).loss
    assert torch.allclose(model(ids, targets=targets).loss, full, atol=1e-6)
    assert isinstance(model, GPT)
