"""Longformer: same weights as Hugging Face LongformerModel in, same numbers out."""

import pytest
import torch

from attnlab.errors import UserError
from attnlab.models import LongformerConfig, build_model
from attnlab.interop import load_hf_state

transformers = pytest.importorskip("transformers")

SIZES = dict(vocab_size=97, d_model=32, n_layer=2, n_head=4, ffn_hidden=48, max_positions=80, pad_token_id=1,
             type_vocab_size=1, dropout=0.0, attn_dropout=0.0, attention_window=8, norm_eps=1e-12)


def hf_pair(head, hf_class, **extra):
    torch.manual_seed(0)
    hf_config = transformers.LongformerConfig(
        vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=80, pad_token_id=1, type_vocab_size=1, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, attention_window=8, **extra)
    theirs = hf_class(hf_config).eval()
    ours = build_model(LongformerConfig(head=head, n_labels=extra.get("num_labels", 2), **SIZES)).eval()
    load_hf_state(ours, "longformer", theirs.state_dict())
    return ours, theirs


def inputs():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 97, (2, 45), generator=g)  # 45: not a multiple of the window
    mask = torch.ones(2, 45, dtype=torch.long)
    ids[1, 38:], mask[1, 38:] = 1, 0  # padding in the second row
    glob = torch.zeros(2, 45, dtype=torch.long)
    glob[0, [0, 17]] = 1
    glob[1, [0, 5, 30]] = 1  # different counts of global tokens per row
    return ids, mask, glob


def test_hidden_states_match_hf_longformer_model():
    ours, theirs = hf_pair("none", transformers.LongformerModel)
    ids, mask, glob = inputs()
    with torch.no_grad():
        ref = theirs(ids, attention_mask=mask, global_attention_mask=glob).last_hidden_state
        out = ours(ids, attention_mask=mask, global_attention_mask=glob).hidden_states
        ref_local = theirs(ids, attention_mask=mask).last_hidden_state
        out_local = ours(ids, attention_mask=mask).hidden_states
    assert (out - ref).abs().max() <= 1e-5
    assert (out_local - ref_local).abs().max() <= 1e-5
    assert (out - out_local).abs().max() > 1e-3  # the global tokens matter


def test_mlm_logits_match_hf_longformer_for_masked_lm():
    ours, theirs = hf_pair("mlm", transformers.LongformerForMaskedLM)
    ids, mask, glob = inputs()
    labels = torch.full_like(ids, -100)
    labels[:, 3] = ids[:, 3]
    with torch.no_grad():
        ref = theirs(ids, attention_mask=mask, global_attention_mask=glob, labels=labels)
        out = ours(ids, attention_mask=mask, global_attention_mask=glob, labels=labels)
    assert (out.logits - ref.logits).abs().max() <= 1e-5
    assert abs(out.loss.item() - ref.loss.item()) <= 1e-5


def test_classification_puts_global_attention_on_cls_by_default():
    ours, theirs = hf_pair("classification", transformers.LongformerForSequenceClassification, num_labels=3)
    ids, mask, _ = inputs()
    with torch.no_grad():
        ref = theirs(ids, attention_mask=mask).logits
        out = ours(ids, attention_mask=mask, labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3) and (out.logits - ref).abs().max() <= 1e-5
    assert out.loss is not None


def test_bad_weights_and_config_are_user_errors():
    ours, theirs = hf_pair("none", transformers.LongformerModel)
    state = theirs.state_dict()
    state.pop("encoder.layer.0.attention.self.query_global.weight")
    with pytest.raises(UserError, match="missing: encoder.layer.0.attention.self.query_global.weight"):
        load_hf_state(ours, "longformer", state)
    with pytest.raises(UserError, match="attention_window must be even"):
        LongformerConfig(attention_window=7)


@pytest.mark.parametrize("head,hf_class", [("mlm", "LongformerForMaskedLM"),
                                           ("classification", "LongformerForSequenceClassification")])
def test_import_and_export_through_hugging_face_directories(head, hf_class, tmp_path):
    from attnlab.interop import export_hf, import_hf

    _, theirs = hf_pair(head, getattr(transformers, hf_class), num_labels=3)
    theirs.save_pretrained(tmp_path / "in")
    ours, _ = import_hf(tmp_path / "in")
    export_hf(ours, tmp_path / "out")
    back = getattr(transformers, hf_class).from_pretrained(tmp_path / "out").eval()
    ids, mask, glob = inputs()
    with torch.no_grad():
        ref = theirs(ids, attention_mask=mask, global_attention_mask=glob).logits
        assert (ours(ids, attention_mask=mask, global_attention_mask=glob).logits - ref).abs().max() <= 1e-5
        assert (back(ids, attention_mask=mask, global_attention_mask=glob).logits - ref).abs().max() <= 1e-5


def test_label_names_come_in_from_hugging_face_and_go_back_out(tmp_path):
    from attnlab.interop import export_hf, import_hf

    names = {0: "neg", 1: "neutral", 2: "pos"}
    _, theirs = hf_pair("classification", transformers.LongformerForSequenceClassification, num_labels=3,
                        id2label=names, label2id={v: k for k, v in names.items()})
    theirs.save_pretrained(tmp_path / "in")
    ours, _ = import_hf(tmp_path / "in")
    assert ours.config.id2label == {"0": "neg", "1": "neutral", "2": "pos"}
    export_hf(ours, tmp_path / "out")
    back = transformers.AutoConfig.from_pretrained(tmp_path / "out")
    assert back.id2label == names and back.label2id == {"neg": 0, "neutral": 1, "pos": 2}
    _, default = hf_pair("classification", transformers.LongformerForSequenceClassification, num_labels=3)
    default.save_pretrained(tmp_path / "plain")
    assert import_hf(tmp_path / "plain")[0].config.id2label is None  # LABEL_0.. means no names
