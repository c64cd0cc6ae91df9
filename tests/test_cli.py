import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from attnlab.checkpoint import load_checkpoint
from attnlab.cli import main

from .conftest import tiny_corpus

TINY = ["model.n_layer=1", "model.n_head=2", "model.d_model=32", "model.max_seq_len=32", "train.batch_size=4",
        "train.eval_batches=2", "train.progress=false"]


def train(tiny_text, out, *extra):
    return main(["train", "--data", str(tiny_text), "--out", str(out), *TINY, "train.max_steps=10",
                 "train.eval_interval=5", *extra])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One trained run shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("cli")
    text = root / "tiny.txt"
    text.write_text(tiny_corpus())
    assert train(text, root / "run") == 0
    return root / "run"


def test_train_generate_eval(run_dir, tiny_text, capsys):
    capsys.readouterr()
    assert main(["generate", str(run_dir), "--prompt", "the cat", "--max-new-tokens", "20", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("the cat") and len(out.rstrip("\n")) == len("the cat") + 20
    assert main(["generate", str(run_dir), "--prompt", "the", "--prompt", "a dog", "--max-new-tokens", "5",
                 "--temperature", "0"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in rows] == ["the", "a dog"] and all(len(r["completion"]) == 5 for r in rows)
    assert main(["eval", str(run_dir), "--data", str(tiny_text)]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["bits_per_char"] == pytest.approx(scores["bits_per_token"])  # char level
    assert 1 < scores["perplexity"] < 40


def test_config_file_with_overrides(tiny_text, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(f"data: {{path: {tiny_text}}}\nmodel: {{preset: llama-nano, max_seq_len: 32}}\n"
                      "train: {max_steps: 3, eval_interval: 3, batch_size: 2, eval_batches: 1, progress: false}\n")
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "r"), "model.n_layer=1"]) == 0
    model, _ = load_checkpoint(tmp_path / "r" / "last")
    assert (model.config.n_layer, model.config.norm, model.config.max_seq_len) == (1, "rmsnorm", 32)


def test_old_field_name_in_an_override_still_trains(tiny_text, tmp_path):
    old_tiny = [item.replace("model.max_seq_len=", "model.block_size=") for item in TINY]
    assert main(["train", "--data", str(tiny_text), "--out", str(tmp_path / "r"), *old_tiny, "train.max_steps=2",
                 "train.eval_interval=2"]) == 0
    model, _ = load_checkpoint(tmp_path / "r" / "last")
    assert model.config.max_seq_len == 32 and "block_size" not in model.config.to_dict()


def test_overrides_may_come_before_and_after_options(tiny_text, tmp_path, capsys):
    assert main(["train", "model.n_layer=1", "--data", str(tiny_text), "--out", str(tmp_path / "r"), *TINY[1:],
                 "train.max_steps=2", "train.eval_interval=2"]) == 0
    model, _ = load_checkpoint(tmp_path / "r" / "last")
    assert model.config.n_layer == 1 and model.config.d_model == 32
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data", str(tiny_text), "--bogus-flag"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --bogus-flag" in capsys.readouterr().err


def test_resume_extends_a_finished_run(tiny_text, tmp_path):
    assert train(tiny_text, tmp_path / "run") == 0
    assert main(["train", "--out", str(tmp_path / "run"), "--resume", "train.max_steps=15"]) == 0
    state = torch.load(tmp_path / "run" / "last" / "trainer.pt", weights_only=True)
    assert state["step"] == 15


@pytest.mark.parametrize("args, message", [
    (["train", "--data", "/nonexistent.txt"], "data path /nonexistent.txt does not exist"),
    (["train", "--data", "{empty}"], "holds no text"),
    (["train", "--data", "{latin1}"], "is not UTF-8"),
    (["train", "--data", "{text}", "model.d_model=30", "model.n_head=4"], "divisible by n_head"),
    (["train", "--data", "{text}", "train.lr=-1"], "lr > 0"),
    (["train", "--data", "{text}", "train.lr=fast"], "lr must be a number, got 'fast'"),
    (["train", "--data", "{text}", "model.nonsense=3"], "unknown field"),
    (["train", "--data", "{text}", "lr"], "must look like section.key=value"),
    (["train", "trian.lr=5"], "run config: unknown section(s) trian; known sections are task, model, tokenizer, "
     "data, train"),
    (["train", "data.val_fractoin=0.5", "--data", "{text}"], "data config: unknown field(s) val_fractoin; "
     "known fields are path, val_fraction"),
    (["train", "--data", "{text}", "tokenizer.vocab_sise=50"], "tokenizer config: unknown field(s) vocab_sise; "
     "known fields are kind, vocab_size"),
    (["train", "--data", "{text}", "data.val_fraction=1.5"], "data config: val_fraction must be in (0, 1), got 1.5"),
    (["train", "--data", "{text}", "tokenizer.kind=bpe", "task=mlm"], "masked LM needs a WordPiece tokenizer"),
    (["train", "--data", "{text}", "task=translate"], "unknown task 'translate'; known tasks: "),
    (["train", "--config", "/nonexistent.yaml"], "config file /nonexistent.yaml does not exist"),
    (["generate", "{run}", "--prompt", "the cat " * 5], "exceeds the model's context window of 32"),
    (["generate", "{run}", "--prompt", "ß"], "never saw"),
    (["generate", "/nonexistent"], "does not exist"),
    (["eval", "{run}", "--data", "/nonexistent.txt"], "does not exist"),
])
def test_bad_input_is_one_line_and_exit_code_2(args, message, run_dir, tiny_text, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    paths = {"empty": tmp_path / "empty.txt", "latin1": tmp_path / "latin1.txt", "text": tiny_text, "run": run_dir}
    args = [a.format(**paths) for a in args]
    if args[0] == "train":
        args += ["--out", str(tmp_path / "new")]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_a_misspelt_section_in_a_config_file_is_one_line_and_starts_nothing(tiny_text, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(f"data: {{path: {tiny_text}}}\ntrian:\n  lr: 5\n")
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("attnlab train: error: run config: unknown section(s) trian; "
                   "known sections are task, model, tokenizer, data, train")
    assert not (tmp_path / "r").exists()


def test_a_second_train_into_the_same_run_is_refused_and_changes_nothing(run_dir, tiny_text, capsys):
    before = (run_dir / "last" / "model.safetensors").read_bytes()
    assert train(tiny_text, run_dir) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (run_dir / "last" / "model.safetensors").read_bytes() == before


def test_a_run_killed_at_a_random_step_resumes_to_the_same_result(tiny_text, tmp_path):
    """SIGKILL the training process once a checkpoint exists; --resume finishes it with the same
    weights as a run that was never interrupted."""
    args = ["--data", str(tiny_text), *TINY, "train.max_steps=24", "train.eval_interval=4", "model.dropout=0.1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cli = [sys.executable, "-m", "attnlab", "train"]
    subprocess.run([*cli, "--out", str(tmp_path / "straight"), *args], check=True, env=env, capture_output=True)
    victim = subprocess.Popen([*cli, "--out", str(tmp_path / "killed"), *args], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (tmp_path / "killed" / "last" / "trainer.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL, "the kill should land mid-run"
    subprocess.run([*cli, "--out", str(tmp_path / "killed"), "--resume"], check=True, env=env, capture_output=True)
    straight, _ = load_checkpoint(tmp_path / "straight" / "last")
    resumed, _ = load_checkpoint(tmp_path / "killed" / "last")
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
