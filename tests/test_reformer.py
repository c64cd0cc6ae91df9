"""Reformer: number-for-number parity with Hugging Face ReformerModel (fixed hash seed)."""

import dataclasses

import pytest
import torch

from attnlab.interop.reformer import config_from_hf, keymap
from attnlab.models import Reformer, ReformerConfig, build_model
from attnlab.errors import UserError

transformers = pytest.importorskip("transformers")


def hf_config(causal, **overrides):
    values = dict(hidden_size=32, num_attention_heads=2, attention_head_size=16, attn_layers=["lsh", "local", "lsh"],
                  axial_pos_shape=[8, 8], axial_pos_embds_dim=[12, 20], max_position_embeddings=64,
                  feed_forward_size=48, lsh_attn_chunk_length=8, local_attn_chunk_length=8, num_buckets=4,
                  num_hashes=2, hash_seed=42, is_decoder=causal, vocab_size=50, hidden_dropout_prob=0.0,
                  local_attention_probs_dropout_prob=0.0, lsh_attention_probs_dropout_prob=0.0, hidden_act="relu")
    values.update(overrides)
    return transformers.ReformerConfig(**values)


def pair(causal, with_head=False, **overrides):
    torch.manual_seed(0)
    config = hf_config(causal, **overrides)
    theirs = (transformers.ReformerModelWithLMHead if with_head else transformers.ReformerModel)(config).eval()
    ours = Reformer(config_from_hf(config.to_dict(), "lm", ())).eval()
    state = keymap(ours.config, "reformer." if with_head else "").to_ours(theirs.state_dict(), ours.state_dict(),
                                                                          source="Hugging Face Reformer")
    missing, unexpected = ours.load_state_dict(state, strict=with_head)
    assert not unexpected and set(missing) <= {"lm_head.weight", "lm_head.bias"}
    return ours, theirs


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("length", [32, 27, 6])  # whole chunks, padded up to whole chunks, within one chunk
def test_hidden_states_match_hugging_face(causal, length):
    ours, theirs = pair(causal)
    ids = torch.randint(1, 50, (2, length), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = theirs(ids).last_hidden_state
        got = ours(ids).hidden_states
    assert got.shape == expected.shape == (2, length, 64)
    assert (got - expected).abs().max().item() <= 1e-5


def test_padding_mask_and_learned_positions_match_hugging_face():
    ours, theirs = pair(False, axial_pos_embds=False, attn_layers=["lsh", "lsh"], num_hashes=3, lsh_num_chunks_after=1)
    ids = torch.randint(1, 50, (2, 32), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 32, dtype=torch.long)
    mask[1, 25:] = 0
    with torch.no_grad():
        expected = theirs(ids, attention_mask=mask).last_hidden_state
        got = ours(ids, attention_mask=mask).hidden_states
    assert (got - expected).abs().max().item() <= 1e-5


def test_lm_logits_match_hugging_face():
    ours, theirs = pair(True, with_head=True)
    ids = torch.randint(1, 50, (1, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (ours(ids).logits - theirs(ids).logits).abs().max().item() <= 1e-5


def test_trains_with_reversible_layers_and_loss_drops():
    torch.manual_seed(0)
    config = ReformerConfig(vocab_size=20, max_seq_len=32, n_layer=2, d_model=32, n_head=2, chunk_length=8,
                            local_chunk_length=8, n_buckets=4, n_hashes=2, axial_shape=[4, 8], axial_dims=[16, 16],
                            dropout=0.1, attn_layers=["local", "lsh"])
    model = build_model(config).train()
    ids = torch.arange(32).remainder(5).repeat(2, 1)  # a periodic sequence is easy to learn
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = model(ids[:, :-1], targets=ids[:, 1:]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_rotary_reformer_reversible_gradients_equal_plain_backprop():
    """Rotary positions reach every layer through the reversible stack's recomputation too."""
    torch.manual_seed(0)
    config = ReformerConfig(vocab_size=20, max_seq_len=32, n_layer=2, d_model=32, n_head=2, chunk_length=8,
                            local_chunk_length=8, n_buckets=4, n_hashes=2, hash_seed=3, position="rotary",
                            attn_layers=["local", "lsh"])
    reversible = build_model(config)
    plain = build_model(dataclasses.replace(config, reversible=False))
    plain.load_state_dict(reversible.state_dict())
    assert not any("pos_emb" in key or "rotary" in key for key in reversible.state_dict())
    ids = torch.randint(0, 20, (2, 32), generator=torch.Generator().manual_seed(1))
    for model in (reversible, plain):
        model(ids[:, :-1], targets=ids[:, 1:]).loss.backward()
    for (name, ours), theirs in zip(reversible.named_parameters(), plain.parameters()):
        torch.testing.assert_close(ours.grad, theirs.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_rotary_reformer_is_refused_by_hugging_face_export(tmp_path):
    from attnlab.interop import export_hf

    model = build_model(ReformerConfig(vocab_size=20, max_seq_len=32, n_layer=1, d_model=32, n_head=2,
                                       chunk_length=8, position="rotary"))
    with pytest.raises(UserError, match="rotary"):
        export_hf(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_config_is_a_user_error():
    with pytest.raises(UserError, match="n_buckets"):
        ReformerConfig(n_buckets=3)
    with pytest.raises(UserError, match="axial_dims"):
        ReformerConfig(d_model=64, axial_dims=[16, 16])
    with pytest.raises(UserError, match="multiple of the chunk"):
        ReformerConfig(max_seq_len=96, chunk_length=64)
    with pytest.raises(UserError, match="attn_layers"):
        ReformerConfig(n_layer=2, attn_layers=["lsh"])
    with pytest.raises(UserError, match="even head size"):
        ReformerConfig(d_model=30, n_head=2, position="rotary")


def test_import_and_export_through_hugging_face_directories(tmp_path):
    from attnlab.interop import export_hf, import_hf

    torch.manual_seed(0)
    theirs = transformers.ReformerModelWithLMHead(hf_config(True)).eval()
    theirs.save_pretrained(tmp_path / "in")
    ours, _ = import_hf(tmp_path / "in")
    export_hf(ours, tmp_path / "out")
    back = transformers.ReformerModelWithLMHead.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(1, 50, (1, 24), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = theirs(ids).logits
        assert (ours(ids).logits - expected).abs().max().item() <= 1e-5
        assert (back(ids).logits - expected).abs().max().item() <= 1e-5
