"""The extension contract from the outside: a family defined here, in a test file, with a decode
state of its own (fixed in size, as a selective state-space model's is), registers one FamilySpec
and is then trained, saved, loaded, decoded, served and driven from the command line by the
library's own code, with no edit anywhere else."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from torch import nn

from attnlab.checkpoint import load_checkpoint, save_checkpoint
from attnlab.cli import main
from attnlab.config import ModelConfig
from attnlab.inference import Sampling, generate
from attnlab.layers import DecodeState, RecomputeState
from attnlab.models.base import CAUSAL_LM, FAMILIES, PRESETS, FamilySpec, Model, ModelOutput, causal_lm_batch, register
from attnlab.processors import TextProcessor
from attnlab.serving.app import ServeConfig, create_app


@dataclasses.dataclass
class DecayConfig(ModelConfig):
    family = "decay_lm"
    vocab_size: int = 64
    max_seq_len: int = 64
    d_model: int = 16

    def validate(self):
        self.require_positive("vocab_size", "max_seq_len", "d_model")


class DecayState(DecodeState):
    """The running summary h (B, C): a fixed size however long the text, so generation never restarts."""

    recurrent = True

    def __init__(self, batch: int, width: int):
        self.h = torch.zeros(batch, width)
        self.mask = torch.zeros(batch, 0, dtype=torch.long)

    def select(self, rows):
        self.h, self.mask = self.h[rows], self.mask[rows]

    def extend(self, other):
        self.h, self.mask = torch.cat([self.h, other.h]), torch.cat([self.mask, other.mask])

    def trim(self):
        pass


class DecayCell(nn.Module):
    """h_t = sigmoid(g) h_{t-1} + x_t W_in, skipping padding; the family's block."""

    def __init__(self, d_model: int):
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(d_model))
        self.w_in = nn.Linear(d_model, d_model)

    def forward(self, x, mask, h):  # x (B, T, C), mask (B, T), h (B, C) -> (B, T, C), h
        decay, inputs, outputs = torch.sigmoid(self.gate), self.w_in(x), []
        for t in range(x.size(1)):
            h = torch.where(mask[:, t, None].bool(), decay * h + inputs[:, t], h)
            outputs.append(h)
        return torch.stack(outputs, dim=1), h


class DecayLM(Model):
    def __init__(self, config: DecayConfig):
        super().__init__(config)
        self.emb = nn.Embedding(config.vocab_size, config.d_model)
        self.cell = DecayCell(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size)

    def init_state(self, batch: int, capacity: int) -> DecayState:
        return DecayState(batch, self.config.d_model)

    def forward(self, input_ids, targets=None, attention_mask=None, position_ids=None, state=None, only_last=False):
        if isinstance(state, RecomputeState):
            return state.rerun(self, input_ids, attention_mask, only_last)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        h = self.emb.weight.new_zeros(input_ids.size(0), self.config.d_model) if state is None else state.h
        hidden, h = self.cell(self.emb(input_ids), mask, h)
        if state is not None:
            state.h = h
        logits = self.head(hidden[:, -1:] if only_last else hidden)
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return ModelOutput(logits=logits, loss=loss)


@pytest.fixture
def decay_family():
    PRESETS["decay-tiny"] = DecayConfig()
    register(FamilySpec(DecayConfig, DecayLM, kind=CAUSAL_LM, block_class=DecayCell, tiny_preset="decay-tiny",
                        example_batch=causal_lm_batch, processor=TextProcessor))
    yield FAMILIES["decay_lm"]
    del FAMILIES["decay_lm"], PRESETS["decay-tiny"]


def test_a_family_defined_outside_the_library_goes_through_every_verb(decay_family, tmp_path, capsys):
    torch.manual_seed(0)
    model = DecayLM(DecayConfig()).eval()
    prompts = [[5, 9, 2, 7, 1], [4, 6], [2, 2, 9]]
    greedy = Sampling(max_new_tokens=80, temperature=0)  # past max_seq_len: the state is recurrent
    with_state = generate(model, prompts, greedy)
    assert with_state == [generate(model, [p], greedy)[0] for p in prompts]
    short = dataclasses.replace(greedy, max_new_tokens=6)
    assert generate(model, prompts, short) == generate(model, prompts, dataclasses.replace(short, use_cache=False))

    tokenizer = TextProcessor.example(DecayConfig())
    save_checkpoint(tmp_path / "ckpt", model, tokenizer)
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    assert type(loaded) is DecayLM and generate(loaded, prompts, short) == generate(model, prompts, short)

    with TestClient(create_app(model, tokenizer, ServeConfig(max_batch=4))) as client:
        body = {"prompt": "the cat", "max_tokens": 100, "temperature": 0}  # more than max_seq_len: no limit
        assert client.post("/v1/completions", json=body).json()["choices"][0]["finish_reason"] in ("stop", "length")
        assert client.post("/v1/embeddings", json={"input": "abc"}).status_code == 400

    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat. " * 200)
    run = tmp_path / "run"
    assert main(["train", "--preset", "decay-tiny", "--data", str(text), "--out", str(run), "train.max_steps=4",
                 "train.eval_interval=4", "train.eval_batches=1", "train.batch_size=2", "train.progress=false"]) == 0
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "the", "--max-new-tokens", "4", "--beams", "2", "--n-best", "2"]) == 0
    assert len(json.loads(capsys.readouterr().out)["outputs"]) == 2
    assert main(["eval", str(run), "--data", str(text)]) == 0
    assert json.loads(capsys.readouterr().out)["perplexity"] > 1
