"""The Bert model itself: padding handling, heads' losses, config checks."""

import pytest
import torch
import torch.nn.functional as F

from attnlab.errors import UserError
from attnlab.models import BertConfig, build_model, preset

transformers = pytest.importorskip("transformers")


def tiny(**fields):
    torch.manual_seed(0)
    return build_model(preset("bert-tiny", vocab_size=50, n_layer=2, dropout=0.0, attn_dropout=0.0, **fields)).eval()


def test_trailing_padding_is_skipped_exactly(tmp_path):
    """Columns that are padding in every row are cut before the blocks: real tokens keep HF's
    numbers, the cut positions come back as zeros."""
    transformers.logging.set_verbosity_error()
    ours = tiny()
    hf = transformers.BertModel(transformers.BertConfig(
        vocab_size=50, hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512)).eval()
    result = hf.load_state_dict(_to_hf_names(ours), strict=False)
    assert not result.unexpected_keys and not [k for k in result.missing_keys if "position_ids" not in k]
    ids = torch.randint(1, 50, (2, 12))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    mask[1, 9:] = 0  # columns 9.. are padding everywhere
    with torch.no_grad():
        mine, theirs = ours(ids, attention_mask=mask).hidden_states, hf(ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    assert (mine[real] - theirs[real]).abs().max() <= 1e-5
    assert (mine[:, 9:] == 0).all()


def _to_hf_names(ours):
    from attnlab.interop.bert import encoder_keymap
    return encoder_keymap("bert", ours.config, "").to_theirs(ours.state_dict(), source="test")


def test_no_padding_needs_no_mask():
    ours = tiny()
    ids = torch.randint(1, 50, (2, 8))
    with torch.no_grad():
        with_mask = ours(ids, attention_mask=torch.ones_like(ids)).hidden_states
        without = ours(ids).hidden_states
    assert torch.equal(with_mask, without)


def test_mlm_loss_counts_only_labelled_tokens():
    model = tiny(head="mlm")
    ids = torch.randint(1, 50, (2, 6))
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[1, 4] = 7, 9
    out = model(ids, labels=labels)
    expected = F.cross_entropy(torch.stack([out.logits[0, 2], out.logits[1, 4]]), torch.tensor([7, 9]))
    assert torch.allclose(out.loss, expected)
    assert model.mlm.decoder.weight is model.embeddings.tok.weight


def test_regression_and_qa_losses():
    model = tiny(head="sequence", n_labels=1)
    ids = torch.randint(1, 50, (3, 5))
    out = model(ids, labels=torch.tensor([0.5, -1.0, 2.0]))
    assert torch.allclose(out.loss, F.mse_loss(out.logits.squeeze(-1), torch.tensor([0.5, -1.0, 2.0])))
    qa = tiny(head="qa")
    out = qa(ids, start_positions=torch.tensor([1, 2, 0]), end_positions=torch.tensor([3, 2, 4]))
    start = F.cross_entropy(out.logits[..., 0], torch.tensor([1, 2, 0]))
    end = F.cross_entropy(out.logits[..., 1], torch.tensor([3, 2, 4]))
    assert torch.allclose(out.loss, (start + end) / 2)


def test_roberta_positions_skip_padding():
    model = build_model(preset("roberta-base", vocab_size=50, n_layer=1, d_model=32, n_head=2, max_positions=20))
    ids = torch.tensor([[0, 5, 6, 2, 1, 1]])  # pad_token_id is 1
    assert model.embeddings.position_ids(ids).tolist() == [[2, 3, 4, 5, 1, 1]]
    assert model.config.max_seq_len == 18


@pytest.mark.parametrize("fields,message", [
    (dict(head="sequence", pooler=False), "set pooler=true"),
    (dict(activation="swiglu"), "activation"),
    (dict(head="ranking"), "head"),
    (dict(pad_token_id=99), "outside the vocabulary"),
    (dict(type_vocab_size=-1), "type_vocab_size"),
    (dict(pooling="max"), "pooling"),
])
def test_bad_config(fields, message):
    with pytest.raises(UserError, match=message):
        BertConfig(vocab_size=50, **fields)


def test_too_long_input():
    model = tiny()
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        model(torch.zeros(1, 513, dtype=torch.long))


def test_with_head_keeps_the_encoder():
    base = tiny(pooler=False)
    ids = torch.randint(1, 50, (2, 6))
    for head, shape in (("sequence", (2, 3)), ("token", (2, 6, 3)), ("mlm", (2, 6, 50)), ("qa", (2, 6, 2))):
        model = base.with_head(head, n_labels=3).eval()
        with torch.no_grad():
            out = model(ids)
            assert torch.equal(out.hidden_states, base(ids).hidden_states)
        assert out.logits.shape == shape and model.config.head == head
        assert (model.pooler is not None) == (head == "sequence")
    assert base.config.head == "none"  # the source is left as it was


def test_mean_pooling_reads_only_real_tokens():
    """pooling="mean": the classifier sees the pooler over the mean of each row's real tokens, so
    extra padding changes nothing; pooling="cls" on the same weights reads position 0."""
    model = tiny(head="sequence", pooling="mean")
    ids = torch.randint(1, 50, (2, 7))
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0
    with torch.no_grad():
        out = model(ids, attention_mask=mask)
        hidden = out.hidden_states
        means = torch.stack([hidden[0, :4].mean(0), hidden[1].mean(0)])
        assert torch.allclose(out.logits, model.classifier(torch.tanh(model.pooler(means))), atol=1e-6)
        padded = model(F.pad(ids, (0, 3)), attention_mask=F.pad(mask, (0, 3))).logits
        assert (padded - out.logits).abs().max() <= 1e-5
        cls = model.with_head("sequence", n_labels=2, pooling="cls")
        cls.load_state_dict(model.state_dict())
        expected = cls.classifier(torch.tanh(cls.pooler(hidden[:, 0])))
        assert torch.allclose(cls(ids, attention_mask=mask).logits, expected, atol=1e-6)


def test_mean_pooled_classifier_does_not_export_to_hugging_face(tmp_path):
    from attnlab.interop import export_hf
    with pytest.raises(UserError, match="pooling='mean' has no Hugging Face equivalent"):
        export_hf(tiny(head="sequence", pooling="mean"), tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
