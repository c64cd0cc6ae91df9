"""BigBird: same weights as Hugging Face BigBirdModel (block-sparse) in, same numbers out.

Hugging Face draws its random blocks with numpy in training mode and uses none (all block 0) in
eval mode; the test hands each of its layers our seeded random blocks instead, so both sides
attend to exactly the same blocks.
"""

import pytest
import torch

from attnlab.models import BigBirdConfig, build_model
from attnlab.interop import load_hf_state

transformers = pytest.importorskip("transformers")

BLOCK, RANDOM = 4, 2


def hf_pair(head, hf_class, **extra):
    torch.manual_seed(0)
    hf_config = transformers.BigBirdConfig(
        vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=128, pad_token_id=0, type_vocab_size=2, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, attention_type="block_sparse", block_size=BLOCK,
        num_random_blocks=RANDOM, hidden_act="gelu_new", **extra)
    theirs = hf_class(hf_config).eval()
    ours = build_model(BigBirdConfig(
        vocab_size=97, d_model=32, n_layer=2, n_head=4, ffn_hidden=48, max_positions=128, pad_token_id=0,
        type_vocab_size=2, dropout=0.0, attn_dropout=0.0, sparse_block_size=BLOCK, n_random_blocks=RANDOM, seed=3,
        head=head, n_labels=extra.get("num_labels", 2))).eval()
    load_hf_state(ours, "big_bird", theirs.state_dict())
    encoder = theirs.bert if hasattr(theirs, "bert") else theirs
    for layer, block in zip(encoder.encoder.layer, ours.blocks):
        layer.attention.self._bigbird_block_rand_mask_with_head = (
            lambda from_seq_length, attn=block.self_attn, **_: list(attn.random_blocks(from_seq_length).numpy()))
    return ours, theirs


def inputs(t=50):  # 50 tokens: padded to 52 = 13 blocks, past the (5 + 2r) blocks full attention needs
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 97, (2, t), generator=g)
    types = torch.randint(0, 2, (2, t), generator=g)
    mask = torch.ones(2, t, dtype=torch.long)
    ids[1, t - 9:], mask[1, t - 9:] = 0, 0
    return ids, mask, types


def test_hidden_states_match_hf_bigbird_block_sparse():
    ours, theirs = hf_pair("none", transformers.BigBirdModel)
    ids, mask, types = inputs()
    with torch.no_grad():
        ref = theirs(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        out = ours(ids, attention_mask=mask, token_type_ids=types).hidden_states
    assert theirs.attention_type == "block_sparse"
    assert (out - ref).abs().max() <= 1e-5
    # the random blocks change the result: another seed gives other numbers
    for block in ours.blocks:
        block.self_attn.seed += 100
    with torch.no_grad():
        assert (ours(ids, attention_mask=mask, token_type_ids=types).hidden_states - ref).abs().max() > 1e-4


def test_mlm_logits_match_and_short_inputs_use_full_attention():
    ours, theirs = hf_pair("mlm", transformers.BigBirdForMaskedLM)
    for t in (50, 20):  # 20 tokens are too few blocks: both sides fall back to full attention
        ids, mask, types = inputs(t)
        with torch.no_grad():
            ref = theirs(ids, attention_mask=mask, token_type_ids=types).logits
            out = ours(ids, attention_mask=mask, token_type_ids=types).logits
        assert out.shape == ref.shape and (out - ref).abs().max() <= 1e-5


def test_classification_head_matches_hf():
    ours, theirs = hf_pair("classification", transformers.BigBirdForSequenceClassification, num_labels=3)
    ids, mask, types = inputs()
    with torch.no_grad():
        ref = theirs(ids, attention_mask=mask, token_type_ids=types).logits
        out = ours(ids, attention_mask=mask, token_type_ids=types).logits
    assert (out - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("head,hf_class", [("mlm", "BigBirdForMaskedLM"),
                                           ("classification", "BigBirdForSequenceClassification")])
def test_import_and_export_through_hugging_face_directories(head, hf_class, tmp_path):
    from attnlab.interop import export_hf, import_hf

    _, theirs = hf_pair(head, getattr(transformers, hf_class), num_labels=3)
    theirs.save_pretrained(tmp_path / "in")
    ours, _ = import_hf(tmp_path / "in")
    export_hf(ours, tmp_path / "out")
    back = getattr(transformers, hf_class).from_pretrained(tmp_path / "out").eval()
    ids, mask, types = inputs(20)  # short: full attention on every side, no random blocks to align
    with torch.no_grad():
        ref = theirs(ids, attention_mask=mask, token_type_ids=types).logits
        assert (ours(ids, attention_mask=mask, token_type_ids=types).logits - ref).abs().max() <= 1e-5
        assert (back(ids, attention_mask=mask, token_type_ids=types).logits - ref).abs().max() <= 1e-5
