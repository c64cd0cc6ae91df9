"""Same weights in, same numbers out: attnlab T5 and the original Transformer (as Marian)
against Hugging Face T5ForConditionalGeneration and MarianMTModel."""

import pytest
import torch

from attnlab.errors import UserError
from attnlab.interop import export_hf, import_hf

from .seq2seq_helpers import hf_marian, hf_t5, padded_batch, twin

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
