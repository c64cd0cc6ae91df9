"""AST against Hugging Face's ASTModel and ASTForAudioClassification: tiny random configs in fp32,
read from and written to checkpoint files through interop/ast.py, outputs within 1e-5."""

import pytest
import torch
from transformers import ASTConfig as HFASTConfig
from transformers import ASTForAudioClassification, ASTModel

from attnlab.errors import UserError
from attnlab.interop import export_hf, import_hf
from attnlab.models import build_model, preset
from attnlab.models.ast import AST

TOL = dict(rtol=0, atol=1e-5)


def hf_config(**fields) -> HFASTConfig:
    """Unequal strides, a frame count off the stride grid and non-default eps and activation, so that
    a mix-up of axes, orders or settings shows."""
    base = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=80, num_mel_bins=40,
                max_length=57, patch_size=16, frequency_stride=8, time_stride=10, layer_norm_eps=1e-6,
                hidden_act="gelu_new", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                id2label={"0": "yes", "1": "no", "2": "up", "3": "down", "4": "left"})
    return HFASTConfig(**{**base, **fields})


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Every parameter random (HF initialises the special tokens, positions and LayerNorms to constants)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.2)
    return model.eval()


def spectrograms(config, batch=3) -> torch.Tensor:
    return torch.randn(batch, config.max_length, config.num_mel_bins, generator=torch.Generator().manual_seed(2))


def test_classifier_matches_hugging_face_read_from_its_files(tmp_path):
    theirs = randomised(ASTForAudioClassification(hf_config()))
    theirs.save_pretrained(tmp_path)
    ours, _ = import_hf(tmp_path)
    assert isinstance(ours, AST) and ours.config.head == "classification" and ours.config.id2label["2"] == "up"
    assert ours.config.grid == (4, 5)  # (40 - 16) // 8 + 1 frequency rows, (57 - 16) // 10 + 1 time columns
    values, labels = spectrograms(ours.config), torch.tensor([0, 3, 4])
    with torch.no_grad():
        expected = theirs(input_values=values, labels=labels)
        got = ours(values, labels=labels)
    assert got.logits.shape == (3, 5)
    torch.testing.assert_close(got.logits, expected.logits, **TOL)
    torch.testing.assert_close(got.loss, expected.loss, **TOL)


def test_base_model_matches_hugging_face_hidden_states(tmp_path):
    theirs = randomised(ASTModel(hf_config(hidden_act="gelu", frequency_stride=10)))
    theirs.save_pretrained(tmp_path)
    ours, _ = import_hf(tmp_path)
    assert ours.config.head == "none" and ours.classifier is None
    values = spectrograms(ours.config)
    with torch.no_grad():
        expected = theirs(input_values=values)
        got = ours(values)
    assert got.logits is None
    torch.testing.assert_close(got.hidden_states, expected.last_hidden_state, **TOL)
    torch.testing.assert_close(ours.pool(got.hidden_states), expected.pooler_output, **TOL)


def test_export_loads_in_hugging_face_and_imports_back(tmp_path):
    torch.manual_seed(0)
    ours = build_model(preset("ast-tiny", n_labels=4, frequency_stride=8, time_stride=6)).eval()
    export_hf(ours, tmp_path / "hf")
    theirs = ASTForAudioClassification.from_pretrained(tmp_path / "hf").eval()
    back, _ = import_hf(tmp_path / "hf")
    values = spectrograms(ours.config)
    with torch.no_grad():
        reference = ours(values).logits
        torch.testing.assert_close(theirs(input_values=values).logits, reference, **TOL)
        assert torch.equal(back(values).logits, reference)
    assert back.config.replace(ffn_hidden=None) == ours.config  # the file states the width; ours derives it


def test_unsupported_checkpoint_is_one_line(tmp_path):
    ASTModel(hf_config(qkv_bias=False)).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="qkv_bias") as err:
        import_hf(tmp_path)
    assert "\n" not in str(err.value)


def test_the_spectrogram_must_fit_the_position_table():
    model = build_model(preset("ast-tiny")).eval()
    with pytest.raises(ValueError, match=r"\(batch, 32 frames, 32 mel bins\)"):
        model(torch.zeros(1, 40, 32))
    with pytest.raises(UserError, match="patch_size"):
        preset("ast-tiny", num_mel_bins=8)
