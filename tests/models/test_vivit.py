"""ViViT (joint attention) and TimeSformer (divided space-time attention): same weights as Hugging Face
VivitForVideoClassification / TimesformerForVideoClassification in, same numbers out, and back."""

import json

import pytest
import torch
from safetensors.torch import save_file

from attnlab.interop import load_hf_state, read_hf_config, read_hf_weights
from attnlab.interop.registry import hf_model_type
from attnlab.models.base import PRESETS
from attnlab.models.vivit import Vivit

transformers = pytest.importorskip("transformers")

SHARED = dict(image_size=16, num_frames=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
              num_attention_heads=4, intermediate_size=48, num_labels=3, layer_norm_eps=1e-6)


def randomised(model):
    """Hugging Face starts some tables at zero (ViViT's CLS and positions, TimeSformer's time
    positions): give every parameter random values so that each one is checked."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return model.eval()


def hf_vivit(**extra):
    config = transformers.VivitConfig(**SHARED, tubelet_size=[2, 4, 4], hidden_act="gelu_fast", **extra)
    return randomised(transformers.VivitForVideoClassification(config))


def hf_timesformer(**extra):
    config = transformers.TimesformerConfig(**SHARED, patch_size=4, attention_type="divided_space_time", **extra)
    return randomised(transformers.TimesformerForVideoClassification(config))


def imported(theirs, tmp_path):
    """Save with Hugging Face, read back with attnlab: the Hub's names, through our key map."""
    theirs.save_pretrained(tmp_path / "hf")
    hf = read_hf_config(tmp_path / "hf")
    model_type = hf_model_type(hf["model_type"])
    weights = read_hf_weights(tmp_path / "hf")
    config = model_type.config_from_hf(hf, "classifier", weights.keys())
    return load_hf_state(Vivit(config), hf["model_type"], weights).eval()


def clips(batch=2, frames=4):
    return torch.randn(batch, frames, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def test_joint_attention_matches_hf_vivit(tmp_path):
    theirs = hf_vivit()
    ours = imported(theirs, tmp_path)
    assert ours.config.attention == "joint" and ours.config.activation == "gelu_tanh"
    x, labels = clips(), torch.tensor([0, 2])
    with torch.no_grad():
        ref = theirs(x, labels=labels)
        hidden = theirs.vivit(x).last_hidden_state
        out = ours(x, labels=labels)
    assert out.hidden_states.shape == hidden.shape == (2, 1 + 2 * 16, 32)
    assert (out.hidden_states - hidden).abs().max() <= 1e-5
    assert (out.logits - ref.logits).abs().max() <= 1e-5
    assert (out.loss - ref.loss).abs() <= 1e-5


def to_time_major(hidden, steps):
    """Hugging Face TimeSformer's tokens are patch-major (CLS, then each patch's t steps): ours are
    time-major."""
    b, n, d = hidden.shape
    tokens = hidden[:, 1:].reshape(b, (n - 1) // steps, steps, d).transpose(1, 2).reshape(b, n - 1, d)
    return torch.cat([hidden[:, :1], tokens], dim=1)


def test_divided_attention_matches_hf_timesformer(tmp_path):
    theirs = hf_timesformer()
    ours = imported(theirs, tmp_path)
    assert ours.config.attention == "divided" and ours.config.tubelet_frames == 1
    x, labels = clips(), torch.tensor([1, 2])
    with torch.no_grad():
        ref = theirs(x, labels=labels)
        hidden = to_time_major(theirs.timesformer(x).last_hidden_state, steps=4)
        out = ours(x, labels=labels)
    assert out.hidden_states.shape == hidden.shape == (2, 1 + 4 * 16, 32)
    assert (out.hidden_states - hidden).abs().max() <= 1e-5
    assert (out.logits - ref.logits).abs().max() <= 1e-5
    assert (out.loss - ref.loss).abs() <= 1e-5


def test_the_two_attentions_are_different_models(tmp_path):
    """Divided attention is not joint attention with other names: the same TimeSformer weights run
    as joint blocks give other numbers (so the divided parity above tests the factorisation)."""
    theirs = hf_timesformer()
    divided = imported(theirs, tmp_path)
    joint = Vivit(divided.config.replace(attention="joint")).eval()
    shared = {k: v for k, v in divided.state_dict().items() if k in joint.state_dict() and "position" not in k}
    joint.load_state_dict(shared, strict=False)
    joint.embedding.positions.data[1:] = divided.embedding.space_positions.data[1:].repeat(4, 1)
    with torch.no_grad():
        assert (joint(clips()).logits - divided(clips()).logits).abs().max() > 1e-3


@pytest.mark.parametrize("preset_name", ["vivit-tiny", "vivit-divided-tiny"])
def test_our_weights_load_into_hf_and_give_the_same_logits(preset_name, tmp_path):
    torch.manual_seed(0)
    ours = Vivit(PRESETS[preset_name]).eval()
    model_type = hf_model_type("timesformer" if ours.config.attention == "divided" else "vivit")
    architecture = model_type.architecture("classifier")
    hf = {"architectures": [architecture], **model_type.config_to_hf(ours.config)}
    (tmp_path / "config.json").write_text(json.dumps(hf))
    theirs = model_type.keymap(ours.config, model_type.base_prefix).to_theirs(ours.state_dict(), "ours")
    save_file(theirs, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = getattr(transformers, architecture).from_pretrained(tmp_path).eval()
    x = clips()
    with torch.no_grad():
        assert (loaded(x).logits - ours(x).logits).abs().max() <= 1e-5
