"""`attnlab convert import|export` for every Hugging Face family beyond the BERT family and GPT-2:
a tiny random Hugging Face model goes in, comes back out, and gives the same numbers."""

import json

import pytest
import torch

from attnlab.cli import main

from .seq2seq_helpers import hf_marian, hf_t5

transformers = pytest.importorskip("transformers")

IDS = torch.randint(3, 40, (2, 16), generator=torch.Generator().manual_seed(0))


def seq2seq_logits(model):
    return model(input_ids=IDS, decoder_input_ids=IDS[:, :5]).logits


def encoder_logits(model):
    return model(input_ids=IDS).logits


def tiny_reformer():
    config = transformers.ReformerConfig(
        hidden_size=32, num_attention_heads=2, attention_head_size=16, attn_layers=["lsh", "local"],
        axial_pos_shape=[4, 8], axial_pos_embds_dim=[12, 20], max_position_embeddings=32, feed_forward_size=48,
        lsh_attn_chunk_length=8, local_attn_chunk_length=8, num_buckets=4, num_hashes=2, hash_seed=42,
        is_decoder=True, vocab_size=50, hidden_dropout_prob=0.0, lsh_attention_probs_dropout_prob=0.0,
        local_attention_probs_dropout_prob=0.0, hidden_act="relu")
    return transformers.ReformerModelWithLMHead(config)


def tiny_longformer():
    config = transformers.LongformerConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=40, type_vocab_size=1, attention_window=8, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0)
    return transformers.LongformerForMaskedLM(config)


def tiny_bigbird():
    config = transformers.BigBirdConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=64, block_size=4, num_random_blocks=2, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0)
    return transformers.BigBirdForMaskedLM(config)  # 16 tokens: too few blocks, full attention both sides


CASES = {  # name -> (a tiny Hugging Face model, our family, its logits)
    "t5": (hf_t5, "t5", seq2seq_logits),
    "marian": (hf_marian, "transformer", seq2seq_logits),
    "reformer": (tiny_reformer, "reformer", encoder_logits),
    "longformer": (tiny_longformer, "longformer", encoder_logits),
    "bigbird": (tiny_bigbird, "bigbird", encoder_logits),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_convert_import_then_export_keeps_the_numbers(case, tmp_path, capsys):
    make, family, logits = CASES[case]
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    reference = make().eval()
    reference.save_pretrained(tmp_path / "hf")
    assert main(["convert", "import", str(tmp_path / "hf"), str(tmp_path / "ours")]) == 0
    assert json.loads(capsys.readouterr().out)["family"] == family
    assert main(["convert", "export", str(tmp_path / "ours"), str(tmp_path / "back")]) == 0
    back = type(reference).from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        expected = logits(reference)
        assert (logits(back) - expected).abs().max() <= 1e-5
    assert expected.abs().max() > 1e-2  # not a comparison of near-zero numbers
