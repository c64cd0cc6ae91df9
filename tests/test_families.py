"""The family contract, run over the registry itself: registering a family (models/base.py
`register(FamilySpec(...))`) enrols it in every test here, with no list kept by hand. Each family's
tiny preset is built, trained, saved, converted, decoded, compressed and served through the same
code a user's command runs."""

import json

import pytest
import torch
from fastapi.testclient import TestClient

from attnlab.checkpoint import load_checkpoint, save_checkpoint
from attnlab.data.batch import Batch
from attnlab.models.base import CAUSAL_LM, ENCODER, FAMILIES, SEQ2SEQ, build_model, preset
from attnlab.serving.app import ENDPOINTS, ServeConfig, create_app
from attnlab.training import TrainConfig, Trainer

SPECS = [FAMILIES[name] for name in sorted(FAMILIES)]
NAMES = [spec.name for spec in SPECS]
of_kind = {kind: [s for s in SPECS if s.kind == kind] for kind in (CAUSAL_LM, SEQ2SEQ, ENCODER)}


def every(specs):
    return pytest.mark.parametrize("spec", specs, ids=[s.name for s in specs])


def tiny_model(spec, **overrides):
    torch.manual_seed(0)
    return build_model(preset(spec.tiny_preset, **overrides))


def example(spec, model) -> dict:
    return spec.example_batch(model.config, torch.Generator().manual_seed(0))


def test_every_kind_has_a_family():
    assert all(of_kind.values()), {kind: [s.name for s in specs] for kind, specs in of_kind.items()}


@every(SPECS)
def test_forward_backward_reaches_every_parameter(spec):
    model = tiny_model(spec)
    loss = model(**example(spec, model)).loss
    assert torch.isfinite(loss)
    loss.backward()
    unreached = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unreached


class FixedBatches:
    """The same batch for every split and step: training must lower its loss."""

    def __init__(self, inputs):
        rows, length = inputs["input_ids"].shape
        self.batch = Batch(inputs, torch.full((rows,), length))

    def sample(self, split, generator):
        return self.batch


@every(SPECS)
def test_trainer_lowers_the_loss_on_a_fixed_batch(spec, tmp_path):
    model = tiny_model(spec, dropout=0.0)
    batch = example(spec, model)
    model.eval()
    with torch.no_grad():
        before = model(**batch).loss.item()
    config = TrainConfig(max_steps=6, lr=3e-3, warmup_steps=0, eval_interval=6, eval_batches=1, progress=False,
                         device="cpu")
    Trainer(model, config, FixedBatches(batch), tmp_path / "run").train()
    model.eval()
    with torch.no_grad():
        after = model(**batch).loss.item()
    assert after < before - 0.05


@every(SPECS)
def test_save_and_load_give_identical_outputs(spec, tmp_path):
    model = tiny_model(spec).eval()
    processor = spec.processor.example(model.config.vocab_size)
    batch = example(spec, model)
    save_checkpoint(tmp_path / "ckpt", model, processor)
    loaded, loaded_processor = load_checkpoint(tmp_path / "ckpt")
    assert type(loaded) is type(model) and loaded.config == model.config
    assert type(loaded_processor) is type(processor)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, rtol=0, atol=0)


# -- serving: every family starts, answers what its kind serves and refuses the rest -------------

REQUESTS = {"/v1/completions": {"prompt": "the cat", "max_tokens": 5, "temperature": 0},
            "/v1/embeddings": {"input": ["the cat", "a dog sat"]},
            "/v1/classify": {"input": "the cat"}}


def client_for(spec):
    model = tiny_model(spec).eval()
    app = create_app(model, spec.processor.example(model.config.vocab_size), ServeConfig(max_batch=4, timeout_s=30))
    return TestClient(app)


@every(SPECS)
def test_the_server_answers_what_the_kind_serves_and_refuses_the_rest(spec):
    with client_for(spec) as client:
        health = client.get("/health").json()
        assert health["kind"] == spec.kind and health["family"] == spec.name
        for path, body in REQUESTS.items():
            reply = client.post(path, json=body)
            if path not in ENDPOINTS[spec.kind]:
                message = reply.json()["error"]["message"]
                assert reply.status_code == 400 and "is not served here" in message and "\n" not in message
            elif path == "/v1/completions":
                assert reply.status_code == 200, reply.text
                choice = reply.json()["choices"][0]
                assert choice["finish_reason"] in ("stop", "length") and isinstance(choice["text"], str)
            elif path == "/v1/embeddings":
                assert reply.status_code == 200, reply.text
                vectors = torch.tensor([row["embedding"] for row in reply.json()["data"]])
                assert vectors.shape == (2, preset(spec.tiny_preset).d_model)
                torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(2))


@every(of_kind[CAUSAL_LM] + of_kind[SEQ2SEQ])
def test_streamed_completions_match_the_whole_reply(spec):
    with client_for(spec) as client:
        body = {**REQUESTS["/v1/completions"], "max_tokens": 8}
        whole = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
        with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as reply:
            assert reply.status_code == 200
            events = [line[len("data: "):] for line in reply.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(event)["choices"][0] for event in events[:-1]]
        assert "".join(c["text"] for c in chunks) == whole
        assert chunks[-1]["finish_reason"] in ("stop", "length")
