"""ViViT (joint attention) and TimeSformer (divided space-time attention) against Hugging Face
(random tiny configs, fp32, max abs diff <= 1e-5): VivitModel / VivitForVideoClassification and
TimesformerModel / TimesformerForVideoClassification, imported and exported through the interop
registry. The registry's contract test runs the joint tiny preset; the divided one runs here."""

import copy

import numpy as np
import pytest
import torch

from attnlab.checkpoint import load_checkpoint, save_checkpoint
from attnlab.compression import inject_lora
from attnlab.compression.lora import lora_modules
from attnlab.compression.targets import ALL_TARGETS, find_linears
from attnlab.errors import UserError
from attnlab.interop import export_hf, import_hf
from attnlab.models.base import build_model, preset
from attnlab.models.vivit import DividedSpaceTimeBlock
from attnlab.processors.video import VideoProcessor

transformers = pytest.importorskip("transformers")

SHARED = dict(image_size=16, num_frames=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
              num_attention_heads=4, intermediate_size=48, layer_norm_eps=1e-6)


def saved(model, tmp_path):
    """Random values for every parameter (Hugging Face starts ViViT's CLS and positions and
    TimeSformer's time positions at zero), saved with save_pretrained as the Hub's files are."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    model.save_pretrained(tmp_path / "hf")
    return model.eval()


def hf_vivit(cls, tmp_path, **extra):
    config = transformers.VivitConfig(**SHARED, tubelet_size=[2, 4, 4], hidden_act="gelu_fast", **extra)
    return saved(cls(config), tmp_path)


def hf_timesformer(cls, tmp_path, **extra):
    config = transformers.TimesformerConfig(**{**SHARED, "patch_size": 4, "attention_type": "divided_space_time",
                                               **extra})
    return saved(cls(config), tmp_path)


def clips(batch=2, frames=4, seed=1):
    return torch.randn(batch, frames, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def to_time_major(hidden, steps):
    """Hugging Face TimeSformer orders its tokens patch-major (CLS, then each patch's t steps); ours
    are time-major."""
    b, n, d = hidden.shape
    tokens = hidden[:, 1:].reshape(b, (n - 1) // steps, steps, d).transpose(1, 2).reshape(b, n - 1, d)
    return torch.cat([hidden[:, :1], tokens], dim=1)


def assert_close(ours, theirs):
    assert ours.shape == theirs.shape and (ours - theirs).abs().max() <= 1e-5


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_joint_attention_matches_hf_vivit_for_video_classification(tmp_path, backend):
    theirs = hf_vivit(transformers.VivitForVideoClassification, tmp_path, num_labels=3,
                      id2label={0: "left", 1: "right", 2: "still"})
    ours, _ = import_hf(tmp_path / "hf")
    for block in ours.blocks:
        block.self_attn.backend = backend
    c = ours.config
    assert (c.attention, c.activation, c.tubelet_frames, c.head) == ("joint", "gelu_tanh", 2, "classifier")
    assert c.id2label == {"0": "left", "1": "right", "2": "still"}
    x, labels = clips(), torch.tensor([0, 2])
    with torch.no_grad():
        ref, out = theirs(x, labels=labels), ours(x, labels=labels)
        assert_close(out.hidden_states, theirs.vivit(x).last_hidden_state)
    assert out.hidden_states.shape == (2, 1 + 2 * 16, 32)
    assert_close(out.logits, ref.logits)
    assert_close(out.loss, ref.loss)


def test_joint_attention_matches_hf_vivit_model_without_its_pooler(tmp_path):
    theirs = hf_vivit(transformers.VivitModel, tmp_path)
    ours, _ = import_hf(tmp_path / "hf")
    assert ours.config.head == "none" and ours.classifier is None
    with torch.no_grad():
        assert_close(ours(clips()).hidden_states, theirs(clips()).last_hidden_state)


@pytest.mark.parametrize("cls", ["TimesformerForVideoClassification", "TimesformerModel"])
def test_divided_attention_matches_hf_timesformer(tmp_path, cls):
    theirs = hf_timesformer(getattr(transformers, cls), tmp_path, num_labels=3)
    ours, _ = import_hf(tmp_path / "hf")
    assert ours.config.attention == "divided" and ours.config.tubelet_frames == 1
    assert all(isinstance(block, DividedSpaceTimeBlock) for block in ours.blocks)
    x, labels = clips(), torch.tensor([1, 2])
    with torch.no_grad():
        base = theirs if cls == "TimesformerModel" else theirs.timesformer
        hidden = to_time_major(base(x).last_hidden_state, steps=4)
        assert_close(ours(x).hidden_states, hidden)
        if cls != "TimesformerModel":
            ref, out = theirs(x, labels=labels), ours(x, labels=labels)
            assert_close(out.logits, ref.logits)
            assert_close(out.loss, ref.loss)
    assert hidden.shape == (2, 1 + 4 * 16, 32)


def test_the_two_attentions_are_different_models(tmp_path):
    """Divided attention is not joint attention under other names: TimeSformer's weights run as
    joint blocks (positions made equal) give other numbers, so the divided parity tests the factorisation."""
    hf_timesformer(transformers.TimesformerForVideoClassification, tmp_path, num_labels=3)
    divided, _ = import_hf(tmp_path / "hf")
    joint = build_model(divided.config.replace(attention="joint")).eval()
    joint.load_state_dict({k: v for k, v in divided.state_dict().items() if k in joint.state_dict()}, strict=False)
    with torch.no_grad():
        space, time = divided.embedding.space_positions, divided.embedding.time_positions
        joint.embedding.positions.copy_(torch.cat([space[:1], (space[1:] + time[:, None]).flatten(0, 1)]))
        assert_close(joint.embedding(clips()), divided.embedding(clips()))
        assert (joint(clips()).logits - divided(clips()).logits).abs().max() > 1e-3


@pytest.mark.parametrize("preset_name, cls", [("vivit-tiny", "VivitForVideoClassification"),
                                              ("vivit-divided-tiny", "TimesformerForVideoClassification")])
def test_export_loads_in_hugging_face_with_the_same_logits_and_imports_back(tmp_path, preset_name, cls):
    torch.manual_seed(0)
    ours = build_model(preset(preset_name, id2label={"0": "a", "1": "b", "2": "c"})).eval()
    export_hf(ours, tmp_path / "out")
    theirs = getattr(transformers, cls).from_pretrained(tmp_path / "out").eval()
    back, _ = import_hf(tmp_path / "out")
    assert back.config == ours.config and theirs.config.id2label[2] == "c"
    with torch.no_grad():
        assert_close(theirs(clips()).logits, ours(clips()).logits)
        torch.testing.assert_close(back(clips()).logits, ours(clips()).logits, rtol=0, atol=0)


def test_exports_hugging_face_cannot_hold_are_refused_in_one_line(tmp_path):
    divided_tubelets = build_model(preset("vivit-divided-tiny", tubelet_frames=2))
    with pytest.raises(UserError, match="tubelet_frames=2 has no TimeSformer equivalent") as err:
        export_hf(divided_tubelets, tmp_path / "out")
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()


def test_imports_attnlab_cannot_run_are_refused_in_one_line(tmp_path):
    hf_timesformer(transformers.TimesformerForVideoClassification, tmp_path / "a", attention_type="joint_space_time")
    with pytest.raises(UserError, match="attention_type='joint_space_time' is not supported"):
        import_hf(tmp_path / "a" / "hf")
    hf_vivit(transformers.VivitForVideoClassification, tmp_path / "b", qkv_bias=False)
    with pytest.raises(UserError, match="qkv_bias=false"):
        import_hf(tmp_path / "b" / "hf")


# -- the divided variant through the contract's checks (tests/test_families.py runs the joint tiny preset) --

def test_divided_trains_saves_and_compresses(tmp_path):
    torch.manual_seed(0)
    model = build_model(preset("vivit-divided-tiny"))
    processor = VideoProcessor.example(model.config)
    items = processor.example_items(2, np.random.default_rng(0))
    batch = {**processor(list(items)), "labels": torch.tensor([0, 2])}
    model(**batch).loss.backward()
    assert not [name for name, p in model.named_parameters() if p.grad is None]
    model.eval()
    save_checkpoint(tmp_path / "ckpt", model, processor)
    loaded, loaded_processor = load_checkpoint(tmp_path / "ckpt")
    assert loaded_processor == processor
    with torch.no_grad():
        reference = model(**batch).logits
        torch.testing.assert_close(loaded(**batch).logits, reference, rtol=0, atol=0)
    for block in model.blocks:  # both attentions' projections are compression targets
        assert len(find_linears(block, ("q",))) == 2 and find_linears(block, ("ffn",))
    lora = copy.deepcopy(model)
    inject_lora(lora, rank=2, targets=ALL_TARGETS)
    assert len(lora_modules(lora)) == len(find_linears(model))
    with torch.no_grad():
        torch.testing.assert_close(lora(**batch).logits, reference)
