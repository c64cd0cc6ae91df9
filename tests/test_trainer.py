import json
import math

import pytest
import torch

from attnlab.checkpoint import load_checkpoint
from attnlab.errors import UserError
from attnlab.training import TrainConfig, Trainer, lr_at, param_groups
from attnlab.training.tasks import resolve_run, setup_task


def run_config(tiny_text, **train):
    return {
        "task": "lm",
        "data": {"path": str(tiny_text), "val_fraction": 0.2},
        "tokenizer": {"kind": "char"},
        "model": {"n_layer": 1, "n_head": 2, "d_model": 32, "max_seq_len": 16, "dropout": 0.1},
        "train": {"max_steps": 12, "batch_size": 4, "eval_interval": 4, "eval_batches": 2, "warmup_steps": 3,
                  "log_interval": 2, "progress": False, **train},
    }


def make_trainer(run, run_dir, resume=False):
    run = resolve_run(run)
    model, tokenizer, batches = setup_task(run, run_dir, resume)
    return Trainer(model, run.train, batches, run_dir, tokenizer)


def test_resume_after_an_interruption_gives_the_same_parameters(tiny_text, tmp_path):
    run = run_config(tiny_text, grad_accum=2)
    straight = make_trainer(run, tmp_path / "straight")
    straight.train()
    interrupted = make_trainer(run, tmp_path / "split")
    interrupted.train(stop_at=6)
    resumed = make_trainer(run, tmp_path / "split", resume=True)
    resumed.resume(tmp_path / "split" / "last")
    assert resumed.step == 6
    resumed.train()
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_run_directory_holds_checkpoints_metrics_and_plot(tiny_text, tmp_path):
    trainer = make_trainer(run_config(tiny_text), tmp_path)
    last = trainer.train()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_loss" in r] == [4, 8, 12]
    assert all(r["tokens_per_s"] > 0 for r in records if "train_loss" in r)
    assert last["step"] == 12 and math.isfinite(last["val_loss"])
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    best, _ = load_checkpoint(tmp_path / "best")
    assert trainer.best_val == min(r["val_loss"] for r in records if "val_loss" in r)
    assert (tmp_path / "last" / "trainer.pt").exists() and not (tmp_path / "best" / "trainer.pt").exists()
    assert best.config == trainer.model.config


def test_training_reduces_the_loss(tiny_text, tmp_path):
    run = run_config(tiny_text, max_steps=60, eval_interval=60, lr=3e-3)
    run["model"]["dropout"] = 0.0
    trainer = make_trainer(run, tmp_path)
    first = trainer.evaluate()
    assert trainer.train()["val_loss"] < first - 1.0


def test_no_weight_decay_on_norms_biases_and_embeddings():
    from attnlab.models import GPTConfig, build_model

    model = build_model(GPTConfig(vocab_size=10, max_seq_len=8, n_layer=1, n_head=1, d_model=8))
    decay, no_decay = param_groups(model, 0.1)
    decayed = {id(p) for p in decay["params"]}
    assert id(model.tok_emb.weight) not in decayed and id(model.pos_emb.weight) not in decayed
    assert id(model.blocks[0].norm_self.weight) not in decayed and id(model.blocks[0].ffn.up.bias) not in decayed
    assert id(model.blocks[0].ffn.up.weight) in decayed and no_decay["weight_decay"] == 0.0


def test_learning_rate_schedules():
    cosine = [lr_at(s, "cosine", 1e-3, 1e-4, 10, 100) for s in range(100)]
    assert cosine[0] == pytest.approx(1e-4) and cosine[9] == pytest.approx(1e-3)
    assert cosine[-1] == pytest.approx(1e-4, rel=1e-2) and all(a >= b for a, b in zip(cosine[9:], cosine[10:]))
    inverse = [lr_at(s, "inverse_sqrt", 1e-3, 0, 10, 100) for s in range(100)]
    assert max(inverse) == pytest.approx(1e-3) and inverse.index(max(inverse)) == 9
    assert inverse[39] == pytest.approx(1e-3 * math.sqrt(10 / 40))


def test_bad_train_config_is_named():
    with pytest.raises(UserError, match="train config: precision='fp8'"):
        TrainConfig(precision="fp8")
    with pytest.raises(UserError, match="train config: unknown field.*learning_rate"):
        TrainConfig.from_dict({"learning_rate": 1})


def test_config_values_are_checked_against_their_types():
    assert TrainConfig(lr="3e-4").lr == pytest.approx(3e-4)  # YAML 1.1 reads 3e-4 as text
    assert isinstance(TrainConfig(min_lr=0).min_lr, float)
    for bad, message in [({"lr": "fast"}, "lr must be a number, got 'fast'"),
                         ({"max_steps": 2.5}, "max_steps must be an integer"),
                         ({"progress": "yes"}, "progress must be true or false")]:
        with pytest.raises(UserError, match=message):
            TrainConfig(**bad)


def test_the_trainer_takes_any_batch_and_counts_its_real_tokens(tmp_path):
    """A batch source whose model reads `x` and `y` (no input_ids): the trainer passes the
    inputs on and counts the tokens the batch says it holds."""
    from types import SimpleNamespace

    from attnlab.data.batch import Batch

    class Regression(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 1)

        def forward(self, x, y):
            return SimpleNamespace(loss=torch.nn.functional.mse_loss(self.linear(x), y))

    class Rows:
        batch_size = 4

        def sample(self, split, generator):
            x = torch.randn(self.batch_size, 3, generator=generator)
            return Batch({"x": x, "y": x.sum(dim=1, keepdim=True)}, torch.tensor([1, 2, 3, 0]))

    config = TrainConfig(max_steps=40, grad_accum=2, lr=0.05, warmup_steps=0, eval_batches=2, progress=False,
                         device="cpu")
    trainer = Trainer(Regression(), config, Rows(), tmp_path)
    first = trainer.evaluate()
    losses = [trainer.train_step() for _ in range(40)]
    assert all(tokens == 2 * 6 for _, tokens in losses)
    assert trainer.evaluate() < first / 10
