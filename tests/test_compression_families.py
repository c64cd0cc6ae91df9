"""Compression on the tiny model of every family, and the one mask convention of every attention layer.

Each family's attention is a different layer (relative, LSH + local, sliding window with global
projections, block sparse); compression must reach all of their projections, and a compressed
checkpoint of each must reload to the same outputs.
"""

import pytest
import torch
import torch.nn.functional as F

from attnlab.checkpoint import load_checkpoint, save_checkpoint
from attnlab.compression import inject_lora, prune_magnitude, prune_structured, quantize_model, sparsity_report
from attnlab.compression.lora import LoRALinear
from attnlab.compression.prune import prune_heads
from attnlab.compression.quantize import QuantizedLinear
from attnlab.compression.targets import find_linears
from attnlab.errors import UserError
from attnlab.layers import LocalSelfAttention, LSHSelfAttention, MultiHeadAttention
from attnlab.layers.attention import AttentionBase
from attnlab.layers.relative_attention import RelativeMultiHeadAttention
from attnlab.layers.sparse_attention import BigBirdAttention, SlidingWindowAttention
from attnlab.models import (BertConfig, BigBirdConfig, GPTConfig, LongformerConfig, ReformerConfig, T5Config,
                            TransformerConfig, TransformerXLConfig, build_model)

B, T = 2, 32


def ids(vocab, t=T):
    return torch.randint(3, vocab, (B, t), generator=torch.Generator().manual_seed(1))


def padded(t=T):
    mask = torch.ones(B, t, dtype=torch.long)
    mask[1, -5:] = 0
    return mask


# family -> (config, batch, projections in all blocks: the LoRA adapters / quantised layers to expect)
FAMILIES = {
    "gpt": lambda: (GPTConfig(vocab_size=64, max_seq_len=32, n_layer=2, n_head=2, d_model=32),
                    dict(input_ids=ids(64)), 2 * (4 + 2)),
    "bert": lambda: (BertConfig(vocab_size=64, max_positions=64, n_layer=2, n_head=2, d_model=32, dropout=0.0,
                                attn_dropout=0.0),
                     dict(input_ids=ids(64), attention_mask=padded()), 2 * (4 + 2)),
    # 2 encoder self-attentions, 2 decoder self- and 2 cross-attentions, 4 feed-forwards
    "transformer": lambda: (TransformerConfig(vocab_size=64, d_model=32, n_head=2, ffn_hidden=64, dropout=0.0,
                                              max_positions=64),
                            dict(input_ids=ids(64), attention_mask=padded(), decoder_input_ids=ids(64, 12)),
                            6 * 4 + 4 * 2),
    "t5": lambda: (T5Config(vocab_size=64, d_model=32, head_dim=16, ffn_hidden=64, n_layer=2, n_head=2, dropout=0.0),
                   dict(input_ids=ids(64), attention_mask=padded(), decoder_input_ids=ids(64, 12)),
                   6 * 4 + 4 * 2),
    # q, k, v, r (the distance projection), out per layer
    "transformer_xl": lambda: (TransformerXLConfig(vocab_size=64, max_seq_len=32, segment_length=16, mem_len=16,
                                                   n_layer=2, n_head=2, d_model=32),
                               dict(input_ids=ids(64)), 2 * (5 + 2)),
    # q, k, v and the global q, k, v, out per layer
    "longformer": lambda: (LongformerConfig(vocab_size=64, max_positions=80, n_layer=2, n_head=2, d_model=32,
                                            attention_window=8, dropout=0.0, attn_dropout=0.0, pad_token_id=1),
                           dict(input_ids=ids(64), attention_mask=padded(),
                                global_attention_mask=F.one_hot(torch.tensor([0, 3]), T)), 2 * (7 + 2)),
    # 32 tokens in blocks of 4 with 1 random block: long enough for the block-sparse pattern
    "bigbird": lambda: (BigBirdConfig(vocab_size=64, max_positions=64, n_layer=2, n_head=2, d_model=32,
                                      sparse_block_size=4, n_random_blocks=1, dropout=0.0, attn_dropout=0.0),
                        dict(input_ids=ids(64), attention_mask=padded()), 2 * (4 + 2)),
    # a local layer (q, k, v, out) and an LSH layer (qk, v, out)
    "reformer": lambda: (ReformerConfig(vocab_size=64, max_seq_len=32, n_layer=2, d_model=32, n_head=2,
                                        chunk_length=8, local_chunk_length=8, n_buckets=4, n_hashes=2, hash_seed=5,
                                        axial_shape=[4, 8], axial_dims=[16, 16], attn_layers=["local", "lsh"]),
                         dict(input_ids=ids(64)), 4 + 3 + 2 * 2),
}
# seeded random hashing / random blocks are drawn for all heads at once; T5 shares one per-head bias over its layers
NO_HEAD_PRUNING = {"reformer", "bigbird", "t5"}


def tiny(family):
    config, batch, projections = FAMILIES[family]()
    torch.manual_seed(0)
    return build_model(config).eval(), batch, projections


@torch.no_grad()
def output(model, batch):
    out = model(**batch)
    return out.logits if out.logits is not None else out.hidden_states


def cosine(a, b):
    return F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


def attention_layers(model):
    return [m for m in model.modules() if isinstance(m, AttentionBase)]


def assert_round_trip(model, batch, tmp_path):
    save_checkpoint(tmp_path / "ck", model)
    loaded, _ = load_checkpoint(tmp_path / "ck")
    torch.testing.assert_close(output(loaded, batch), output(model, batch), rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_adapts_every_projection_of_every_layer_and_changes_nothing_at_injection(family, tmp_path):
    model, batch, projections = tiny(family)
    before = output(model, batch)
    inject_lora(model, rank=4, targets="q,k,v,o,ffn")
    adapters = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert len(adapters) == projections
    assert all(isinstance(attention.out_proj, LoRALinear) for attention in attention_layers(model))
    torch.testing.assert_close(output(model, batch), before, rtol=0, atol=1e-6)
    with torch.no_grad():  # trained adapters, so the round trip has something to keep
        for adapter in adapters:
            adapter.lora_b.normal_(0, 0.05)
    assert cosine(output(model, batch), before) < 1 - 1e-6
    assert_round_trip(model, batch, tmp_path)


def test_lora_reaches_the_special_projections():
    """XL's distance projection is a key, the Reformer's shared qk both query and key, and
    Longformer's global projections sit beside the plain ones."""
    for family, names in (("transformer_xl", {"k": "r_proj"}), ("reformer", {"q": "qk_proj", "k": "qk_proj"}),
                          ("longformer", {"q": "q_global", "k": "k_global", "v": "v_global"})):
        for target, name in names.items():
            model, _, _ = tiny(family)
            inject_lora(model, rank=2, targets=target)
            assert {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, LoRALinear)} >= {name}


@pytest.mark.parametrize("scheme", ["dynamic_int8", "int8", "int4"])
@pytest.mark.parametrize("family", FAMILIES)
def test_quantisation_replaces_every_projection_and_keeps_outputs(family, scheme, tmp_path):
    model, batch, projections = tiny(family)
    before = output(model, batch)
    quantize_model(model, scheme)
    assert sum(isinstance(m, QuantizedLinear) for m in model.modules()) == projections
    assert find_linears(model) == []  # no float projection left
    assert cosine(output(model, batch), before) > (0.99 if scheme != "int4" else 0.95)
    assert_round_trip(model, batch, tmp_path)


@pytest.mark.parametrize("family", FAMILIES)
def test_magnitude_pruning_reaches_every_layer(family, tmp_path):
    model, batch, projections = tiny(family)
    masks = prune_magnitude(model, 0.5)
    assert len(masks) == projections
    assert all((~mask).any() for mask in masks.values())  # every projection lost weights
    assert all((attention.v_proj.weight == 0).any() for attention in attention_layers(model))
    assert sparsity_report(model)["targeted_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert_round_trip(model, batch, tmp_path)


@pytest.mark.parametrize("family", sorted(set(FAMILIES) - NO_HEAD_PRUNING))
def test_structured_pruning_removes_heads_and_neurons_and_reloads(family, tmp_path):
    model, batch, _ = tiny(family)
    parameters = model.num_parameters()
    report = prune_structured(model, 0.5)
    assert sum(report["heads_after"]) < sum(report["heads_before"])
    assert sum(report["ffn_after"]) < sum(report["ffn_before"])
    assert model.num_parameters() < parameters
    assert torch.isfinite(output(model, batch)).all()
    assert_round_trip(model, batch, tmp_path)


@pytest.mark.parametrize("family", sorted(NO_HEAD_PRUNING))
def test_structured_pruning_refuses_heads_it_cannot_remove_but_prunes_neurons(family, tmp_path):
    model, batch, _ = tiny(family)
    with pytest.raises(UserError, match=f"structured head pruning does not apply to the {family} family") as error:
        prune_structured(model, 0.5)
    assert "\n" not in str(error.value)
    report = prune_structured(model, 0.5, heads=False)
    assert report["heads_after"] == report["heads_before"]
    assert sum(report["ffn_after"]) < sum(report["ffn_before"])
    assert_round_trip(model, batch, tmp_path)


def test_pruned_relative_attention_keeps_its_per_head_biases():
    model, batch, _ = tiny("transformer_xl")
    attention = model.blocks[0].attn
    with torch.no_grad():
        attention.content_bias.normal_()
        attention.position_bias.normal_()
    kept_bias = attention.content_bias[1].clone()
    prune_heads(attention, [1])
    assert attention.n_head == 1 and attention.r_proj.out_features == attention.head_dim
    torch.testing.assert_close(attention.content_bias[0], kept_bias)
    assert torch.isfinite(output(model, batch)).all()


# -- the one mask convention ----------------------------------------------------------------------

# (attention layer, sequence length, positions to hide): hiding them with key_mask must equal
# dropping them from the sequence (the first position: the band, chunk and relative patterns are
# all relative to the position, so the rest keep their view; BigBird: the last whole block).
ATTENTIONS = {
    "multi_head": (lambda: MultiHeadAttention(16, 2), 8, [0]),
    "relative": (lambda: RelativeMultiHeadAttention(16, 2), 8, [0]),
    "lsh": (lambda: LSHSelfAttention(16, 2, chunk_length=16), 8, [0]),
    "local": (lambda: LocalSelfAttention(16, 2, chunk_length=16), 8, [0]),
    "sliding_window": (lambda: SlidingWindowAttention(16, 2, 2, global_projections=True), 10, [0]),
    "block_sparse": (lambda: BigBirdAttention(16, 2, block_size=4, n_random=0), 16, [12, 13, 14, 15]),
}


@pytest.mark.parametrize("name", ATTENTIONS)
def test_a_key_hidden_by_key_mask_is_as_if_dropped(name):
    make, t, hidden = ATTENTIONS[name]
    torch.manual_seed(0)
    attention = make().eval()
    x = torch.randn(2, t, 16)
    key_mask = torch.ones(2, t, dtype=torch.bool)
    key_mask[:, hidden] = False
    kept = key_mask[0]
    with torch.no_grad():
        masked = attention(x, key_mask=key_mask)[:, kept]
        dropped = attention(x[:, kept])
        as_padding_mask = attention(x, mask=key_mask[:, None, None, :])[:, kept]  # the same, as a (B, 1, 1, T) mask
    first = 1 if name == "relative" else 0  # causal: the first kept query saw only the hidden key before it
    torch.testing.assert_close(masked[:, first:], dropped[:, first:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(as_padding_mask, masked, atol=1e-6, rtol=0)
