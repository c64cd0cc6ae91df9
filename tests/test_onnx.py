"""ONNX export (interop/onnx.py, `attnlab export --format onnx`): ONNX Runtime computes what
attnlab computes, at batch sizes and lengths other than the ones the graph was traced with, and
a greedy decoding loop fed through the exported KV cache equals attnlab's greedy generate."""

import json

import numpy as np
import pytest
import torch

from attnlab.checkpoint import save_checkpoint
from attnlab.cli import main
from attnlab.compression import quantize_model
from attnlab.errors import UserError
from attnlab.inference import Sampling, generate
from attnlab.inference.generate import left_pad
from attnlab.interop.onnx import export_onnx
from attnlab.models.base import build_model, preset
from attnlab.tokenizers import CharTokenizer

ort = pytest.importorskip("onnxruntime")


def session(directory):
    return ort.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])


def tiny(name, **overrides):
    torch.manual_seed(0)
    return build_model(preset(name, **overrides)).eval()


@pytest.fixture(scope="module", params=["classifier", "headless"])
def encoder(request, tmp_path_factory):
    model = tiny("bert-tiny", vocab_size=100, max_positions=32)
    if request.param == "classifier":
        model = model.classifier_for(["neg", "pos"]).eval()
    out = tmp_path_factory.mktemp(request.param)
    description = export_onnx(model, out)
    return model, session(out), description


def test_an_encoder_equals_onnx_runtime_at_a_new_batch_and_length(encoder):
    model, ort_session, description = encoder
    ids = torch.randint(1, 100, (3, 11), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 7:], mask[2, 4:] = 0, 0  # right padding, as the tokenizer pads
    types = torch.zeros_like(ids)
    types[:, 5:] = 1
    results = ort_session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                                     "token_type_ids": types.numpy()})
    with torch.no_grad():
        out = model(ids, attention_mask=mask, token_type_ids=types)
    if model.config.head == "sequence":
        assert description["outputs"] == ["logits", "hidden_states"]
        np.testing.assert_allclose(results[0], out.logits.numpy(), rtol=0, atol=1e-4)
    else:
        assert description["outputs"] == ["hidden_states"]
    hidden = results[-1]
    real = mask.bool().numpy()
    np.testing.assert_allclose(hidden[real], out.hidden_states.numpy()[real], rtol=0, atol=1e-4)


@pytest.fixture(scope="module", params=["gpt2-style", "llama-style"])
def decoder(request, tmp_path_factory):
    """A GPT with learned positions, and one with rotary positions, RMS norm, SwiGLU and grouped-query attention."""
    styles = {"gpt2-style": {}, "llama-style": dict(position="rotary", norm="rmsnorm", activation="swiglu",
                                                    n_kv_head=1, bias=False, tie_weights=False)}
    model = tiny("gpt-tiny", **styles[request.param])
    out = tmp_path_factory.mktemp(request.param)
    description = export_onnx(model, out)
    return model, session(out), description


def feeds(description, input_ids, attention_mask, past):
    return {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy(),
            **dict(zip(description["inputs"][2:], past))}


def empty_past(model, batch):
    c = model.config
    shape = (batch, c.n_kv_head or c.n_head, 0, c.d_model // c.n_head)
    return [np.zeros(shape, dtype=np.float32)] * (2 * c.n_layer)


def test_a_decoder_without_past_equals_onnx_runtime(decoder):
    model, ort_session, description = decoder
    ids, mask = left_pad([[5, 6, 7, 8, 9], [10, 11]])
    logits, *present = ort_session.run(None, feeds(description, ids, mask, empty_past(model, 2)))
    with torch.no_grad():
        expected = model(ids, attention_mask=mask).logits
    real = mask.bool().numpy()  # left padding: only real positions are compared
    np.testing.assert_allclose(logits[real], expected.numpy()[real], rtol=0, atol=1e-4)
    assert present[0].shape[2] == 5


def test_a_greedy_loop_through_the_onnx_kv_cache_equals_generate(decoder):
    model, ort_session, description = decoder
    prompts = [[3, 1, 4, 1, 5, 9], [2, 7], [6, 6, 6]]
    expected = generate(model, prompts, Sampling(max_new_tokens=8, temperature=0))
    ids, mask = left_pad(prompts)
    past, produced = empty_past(model, len(prompts)), []
    for _ in range(8):  # prefill, then one token per step with the presents fed back as pasts
        logits, *past = ort_session.run(None, feeds(description, ids, mask, past))
        ids = torch.from_numpy(logits[:, -1].argmax(-1))[:, None]
        mask = torch.cat([mask, torch.ones_like(ids)], dim=1)
        produced.append(ids)
    assert torch.cat(produced, dim=1).tolist() == expected


def test_the_export_verb_writes_a_graph_and_refuses_what_it_cannot_export(tmp_path, capsys):
    tokenizer = CharTokenizer.train("abcdefgh ")
    save_checkpoint(tmp_path / "gpt", tiny("gpt-tiny", vocab_size=tokenizer.vocab_size), tokenizer)
    assert main(["export", str(tmp_path / "gpt"), "--format", "onnx", "--out", str(tmp_path / "onnx")]) == 0
    assert json.loads(capsys.readouterr().out)["outputs"][0] == "logits"
    assert (tmp_path / "onnx" / "model.onnx").is_file() and (tmp_path / "onnx" / "onnx.json").is_file()
    assert main(["export", str(tmp_path / "gpt"), "--out", str(tmp_path / "onnx")]) == 0  # its own output: replaced
    capsys.readouterr()
    save_checkpoint(tmp_path / "window", tiny("gpt-tiny", attn_window=4), tokenizer)
    assert main(["export", str(tmp_path / "window"), "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "sliding-window" in err and not (tmp_path / "refused").exists()


def test_a_quantised_model_is_refused_in_one_line(tmp_path):
    with pytest.raises(UserError, match="float model") as err:
        export_onnx(quantize_model(tiny("gpt-tiny"), "dynamic_int8"), tmp_path / "q")
    assert "\n" not in str(err.value) and not (tmp_path / "q").exists()
