"""Same weights in, same numbers out: attnlab T5 and the original Transformer (as Marian)
against Hugging Face T5ForConditionalGeneration and MarianMTModel."""

import pytest
import torch

from attnlab.errors import UserError
from attnlab.interop import export_hf, import_hf
from attnlab.models.base import build_model
from attnlab.models.encoder_decoder import TransformerConfig

from .seq2seq_helpers import hf_marian, hf_t5, padded_batch, spread_weights, twin

pytest.importorskip("transformers")

CASES = {
    "t5-relu": lambda: hf_t5("relu"),
    "t5-gated-gelu": lambda: hf_t5("gated-gelu"),
    "marian-swish": lambda: hf_marian("swish"),
    "marian-gelu-unscaled-separate-vocab": lambda: hf_marian("gelu", scale_embedding=False, shared=False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_hugging_face_with_padding_on_both_sides(case, tmp_path):
    hf = CASES[case]()
    ours = twin(hf, tmp_path)
    src, src_mask, tgt, tgt_mask = padded_batch()
    with torch.no_grad():
        expected = hf(input_ids=src, attention_mask=src_mask, decoder_input_ids=tgt,
                      decoder_attention_mask=tgt_mask).logits
        got = ours(src, attention_mask=src_mask, decoder_input_ids=tgt, decoder_attention_mask=tgt_mask).logits
    real = tgt_mask.bool()
    assert (got[real] - expected[real]).abs().max() <= 1e-5
    assert expected.abs().max() > 1.0  # the comparison is not between near-zero numbers


@pytest.mark.parametrize("case", ["t5-relu", "marian-swish"])
def test_loss_matches_hugging_face(case, tmp_path):
    hf = CASES[case]()
    ours = twin(hf, tmp_path)
    src, src_mask, tgt, tgt_mask = padded_batch()
    labels = tgt.masked_fill(tgt_mask == 0, -100)
    with torch.no_grad():
        expected = hf(input_ids=src, attention_mask=src_mask, labels=labels).loss
        got = ours(src, attention_mask=src_mask, labels=labels).loss
    assert abs(got.item() - expected.item()) <= 1e-5


@pytest.mark.parametrize("case", ["t5-gated-gelu", "marian-swish"])
def test_export_loads_in_hugging_face_with_the_same_logits(case, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    hf = CASES[case]()
    ours = twin(hf, tmp_path / "in")
    export_hf(ours, tmp_path / "out")
    back = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "out").eval()
    src, src_mask, tgt, tgt_mask = padded_batch()
    with torch.no_grad():
        expected = hf(input_ids=src, attention_mask=src_mask, decoder_input_ids=tgt).logits
        got = back(input_ids=src, attention_mask=src_mask, decoder_input_ids=tgt).logits
    assert (got - expected).abs().max() <= 1e-5


def marian_shaped(shared=True, **changes):
    """An attnlab transformer of Marian's shape (halves, post-LN) without an output bias."""
    config = TransformerConfig(vocab_size=48, tgt_vocab_size=None if shared else 40, share_embeddings=shared,
                               d_model=32, n_head=4, ffn_hidden=64, n_encoder_layer=2, n_decoder_layer=2, dropout=0.0,
                               activation="silu", position_layout="halves", prenorm=False, output_bias=False,
                               max_positions=64, pad_id=2, eos_id=1, decoder_start_id=2)
    return build_model(config.replace(**changes))


@pytest.mark.parametrize("shared", [True, False], ids=["shared-vocab", "separate-vocab"])
def test_model_without_output_bias_exports_as_marian_with_the_same_logits(shared, tmp_path):
    from transformers import MarianMTModel

    torch.manual_seed(0)
    ours = spread_weights(marian_shaped(shared).eval(), seed=3, std=0.15)
    export_hf(ours, tmp_path / "out")
    back = MarianMTModel.from_pretrained(tmp_path / "out").eval()
    assert torch.equal(back.final_logits_bias, torch.zeros(1, 48 if shared else 40))
    src, src_mask, tgt, tgt_mask = padded_batch()
    with torch.no_grad():
        expected = ours(src, attention_mask=src_mask, decoder_input_ids=tgt, decoder_attention_mask=tgt_mask).logits
        got = back(input_ids=src, attention_mask=src_mask, decoder_input_ids=tgt,
                   decoder_attention_mask=tgt_mask).logits
    real = tgt_mask.bool()
    assert (got[real] - expected[real]).abs().max() <= 1e-5
    assert expected.abs().max() > 1.0  # the comparison is not between near-zero numbers


def test_paper_position_layout_refuses_marian_export_and_says_how(tmp_path):
    with pytest.raises(UserError, match=r"position_layout='interleaved'.*model\.position_layout=halves"):
        export_hf(marian_shaped(position_layout="interleaved"), tmp_path / "out")
    with pytest.raises(UserError, match=r"pre-LN.*model\.prenorm=false"):
        export_hf(marian_shaped(prenorm=True), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_import_names_unexpected_tensors(tmp_path):
    from safetensors.torch import load_file, save_file

    hf_t5().save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights["encoder.block.9.layer.0.SelfAttention.q.weight"] = torch.zeros(2, 2)
    del weights["decoder.final_layer_norm.weight"]
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(UserError, match="encoder.block.9"):
        import_hf(tmp_path)
    del weights["encoder.block.9.layer.0.SelfAttention.q.weight"]
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(UserError, match=r"missing: decoder\.final_layer_norm\.weight"):
        import_hf(tmp_path)
