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


def scripted(trainer, losses_and_tokens, on_step=None):
    """Make `trainer` take steps that report the given (loss, tokens), calling on_step(step) after each."""
    script = iter(losses_and_tokens)

    def step():
        trainer.step += 1
        if on_step:
            on_step(trainer.step)
        return next(script)

    trainer.train_step = step


def test_the_logged_loss_is_the_token_weighted_mean_of_the_interval(tiny_text, tmp_path):
    trainer = make_trainer(run_config(tiny_text, max_steps=4, log_interval=2, eval_interval=100), tmp_path)
    scripted(trainer, [(1.0, 10), (3.0, 30), (5.0, 1), (7.0, 3)])
    trainer.train()
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in logged if "train_loss" in r] == [2.5, 6.5]


def test_checkpoints_between_evaluations_at_the_checkpoint_interval(tiny_text, tmp_path):
    trainer = make_trainer(run_config(tiny_text, max_steps=7, eval_interval=100, checkpoint_interval=3), tmp_path)
    saved = []
    trainer.save = lambda name, with_state: saved.append((trainer.step, name, with_state))
    scripted(trainer, [(1.0, 1)] * 7)
    trainer.train()
    assert saved == [(3, "last", True), (6, "last", True), (7, "best", False), (7, "last", True)]


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_signal_saves_the_step_it_stopped_at_and_the_run_resumes_from_it(tiny_text, tmp_path, name):
    import os
    import signal

    from attnlab.training.trainer import Stopped

    run = run_config(tiny_text, eval_interval=100)
    trainer = make_trainer(run, tmp_path)
    real_step = trainer.train_step

    def step_then_signal():
        result = real_step()
        if trainer.step == 5:
            os.kill(os.getpid(), getattr(signal, name))
        return result

    trainer.train_step = step_then_signal
    with pytest.raises(Stopped, match=f"stopped by {name} at step 5"):
        trainer.train()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handlers are put back
    resumed = make_trainer(run, tmp_path, resume=True)
    resumed.resume(tmp_path / "last")
    assert resumed.step == 5
    assert resumed.train()["step"] == 12


def test_a_time_budget_ends_the_run_with_its_schedule_decayed_and_a_checkpoint(tiny_text, tmp_path, monkeypatch):
    import types

    import attnlab.training.trainer as trainer_module

    now = [0.0]
    monkeypatch.setattr(trainer_module, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    run = run_config(tiny_text, max_steps=1000, eval_interval=1000, warmup_steps=0, max_minutes=1.0, lr=1e-3,
                     min_lr=1e-4)
    trainer = make_trainer(run, tmp_path)
    real_step, lrs = trainer.train_step, []

    def timed_step():  # each step takes 6 s of the 60 s budget: 10 steps
        result = real_step()
        now[0] += 6.0
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        return result

    trainer.train_step = timed_step
    last = trainer.train()
    assert last["step"] == 10 and "val_loss" in last and (tmp_path / "last" / "trainer.pt").exists()
    # decayed for the budget (step k starts at k/10 of it), not for max_steps
    assert lrs == pytest.approx([1e-4 + 0.5 * (1 + math.cos(math.pi * k / 10)) * 9e-4 for k in range(10)])
    resumed = make_trainer(run, tmp_path, resume=True)
    resumed.resume(tmp_path / "last")
    assert resumed.seconds == pytest.approx(60.0) and resumed.budget_spent() >= 1


def test_train_takes_a_time_budget_on_the_command_line_and_refuses_a_negative_one(tiny_text, tmp_path, capsys):
    from attnlab.cli import main

    base = ["train", "--data", str(tiny_text), "model.n_layer=1", "model.d_model=16", "model.n_head=2",
            "model.max_seq_len=16", "train.max_steps=100000", "train.eval_batches=1", "train.progress=false"]
    assert main([*base, "--max-minutes", "-1", "--out", str(tmp_path / "bad")]) == 2
    assert "max_minutes" in capsys.readouterr().err
    assert main([*base, "--max-minutes", "0.05", "--out", str(tmp_path / "run")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0 < result["step"] < 100000 and "val_loss" in result and (tmp_path / "run" / "last").exists()


def kl_to(teacher, student, ids) -> float:
    """Mean KL(teacher || student) of the next-token distributions over a batch of ids (B, T)."""
    with torch.no_grad():
        p, q = (m.eval()(ids).logits.log_softmax(-1) for m in (teacher, student))
    return torch.nn.functional.kl_div(q, p, log_target=True, reduction="sum").item() / (ids.size(0) * ids.size(1))


def saved_teacher(tiny_text, directory, steps=40):
    run = run_config(tiny_text, max_steps=steps, eval_interval=steps, lr=3e-3)
    run["model"]["dropout"] = 0.0
    trainer = make_trainer(run, directory)
    trainer.train()
    return trainer.model.eval(), directory / "last"


def test_a_student_learns_its_teachers_distributions_and_reads_with_its_tokenizer(tiny_text, tmp_path):
    teacher, teacher_dir = saved_teacher(tiny_text, tmp_path / "teacher")
    run = run_config(tiny_text, max_steps=60, eval_interval=60, lr=3e-3, teacher=str(teacher_dir))
    run["model"].update(d_model=16, dropout=0.0)
    student = make_trainer(run, tmp_path / "student")
    ids = student.batches.sample("val", torch.Generator().manual_seed(0)).inputs["input_ids"]
    before = kl_to(teacher, student.model, ids)
    student.train()
    after = kl_to(teacher, student.model, ids)
    assert after < 0.5 * before, (before, after)
    _, tokenizer = load_checkpoint(tmp_path / "student" / "last")
    _, teachers_tokenizer = load_checkpoint(teacher_dir)
    assert tokenizer.chars == teachers_tokenizer.chars


def test_a_model_distilled_from_its_own_weights_starts_at_zero_loss(tiny_text, tmp_path):
    """Same seed, same initial weights: teacher and student agree at every position, so the KL is 0
    (the positions are aligned)."""
    run = run_config(tiny_text, max_steps=1, eval_interval=1)
    run["model"]["dropout"] = 0.0
    twin = make_trainer(run, tmp_path / "twin")
    twin.save("initial", with_state=False)
    student = make_trainer({**run, "train": {**run["train"], "teacher": str(tmp_path / "twin" / "initial")}},
                           tmp_path / "student")
    assert student.train_step()[0] == pytest.approx(0.0, abs=1e-6)


def test_distill_alpha_one_trains_on_the_labels_alone(tiny_text, tmp_path):
    _, teacher_dir = saved_teacher(tiny_text, tmp_path / "teacher", steps=4)
    run = run_config(tiny_text, max_steps=3, eval_interval=3)
    run["model"]["dropout"] = 0.0  # the two runs step in turn, so they would draw each other's dropout masks
    plain = make_trainer(run, tmp_path / "plain")
    labels_only = make_trainer({**run, "train": {**run["train"], "teacher": str(teacher_dir), "distill_alpha": 1.0}},
                               tmp_path / "alpha1")
    for _ in range(3):
        assert labels_only.train_step()[0] == pytest.approx(plain.train_step()[0], abs=1e-6)


def test_a_teacher_that_cannot_teach_is_one_line(tiny_text, tmp_path, capsys):
    from attnlab.checkpoint import save_checkpoint
    from attnlab.cli import main
    from attnlab.models.base import build_model, preset
    from attnlab.tokenizers import CharTokenizer

    characters = CharTokenizer.train(tiny_text.read_text())
    save_checkpoint(tmp_path / "encoder", build_model(preset("bert-tiny", vocab_size=characters.vocab_size)), characters)
    base = ["train", "--data", str(tiny_text), "model.n_layer=1", "model.d_model=16", "model.n_head=2",
            "model.max_seq_len=16", "train.max_steps=2", "train.eval_batches=1", "train.progress=false"]
    _, short_teacher = saved_teacher(tiny_text, tmp_path / "short", steps=1)  # context 16
    for teacher, extra, message in [(tmp_path / "missing", [], "does not exist"),
                                    (tmp_path / "encoder", [], "distillation trains a causal LM from a causal LM"),
                                    (short_teacher, ["model.max_seq_len=32"], "reads at most 16 tokens")]:
        assert main([*base, *extra, f"train.teacher={teacher}", "--out", str(tmp_path / "run")]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "run" / "last").exists()
    with pytest.raises(UserError, match="distill_temperature must be > 0"):
        TrainConfig(distill_temperature=0)
    with pytest.raises(UserError, match="distill_alpha in \\[0, 1\\]"):
        TrainConfig(distill_alpha=1.5)
