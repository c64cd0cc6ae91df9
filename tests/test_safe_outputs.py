"""No verb destroys a user's files, and a run never trains on or records what it did not do
(issue 16): refusals are exit 2 with one line on stderr, and leave what was there byte-identical."""

import json
import shutil

import pytest

from attnlab.cli import main
from attnlab.commands import train as train_command

from .test_cli import TINY
from .test_finetune import base, write_tsv  # noqa: F401  (base is a fixture)


def snapshot(directory):
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def refused(capsys, argv, *needles):
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture
def users_dir(tmp_path):
    """A directory holding someone's work: a file, and a training run in a subfolder."""
    directory = tmp_path / "mine"
    (directory / "old_run" / "last").mkdir(parents=True)
    (directory / "notes.txt").write_text("do not lose me\n")
    (directory / "old_run" / "last" / "model.safetensors").write_bytes(b"\x00weights")
    return directory


def short_train(text, out, *extra):
    return main(["train", "--data", str(text), "--out", str(out), *TINY, "train.max_steps=4",
                 "train.eval_interval=2", *extra])


def test_demo_refuses_a_directory_it_did_not_write(users_dir, capsys):
    before = snapshot(users_dir)
    refused(capsys, ["demo", "--out", users_dir, "--steps", "1"], "--force", "not empty")
    assert snapshot(users_dir) == before


@pytest.mark.parametrize("verb", ["finetune", "compress"])
def test_finetune_and_compress_refuse_a_directory_they_did_not_write(verb, users_dir, tmp_path, base, capsys):  # noqa: F811
    data = write_tsv(tmp_path / "train.tsv")
    before = snapshot(users_dir)
    source = ["--base", base] if verb == "finetune" else [base, "--val", data]
    refused(capsys, [verb, *source, "--train", data, "--out", users_dir, "--epochs", "1"], "--force")
    assert snapshot(users_dir) == before


def test_finetune_replaces_its_own_output_and_with_force_another(tmp_path, base, capsys):  # noqa: F811
    data = write_tsv(tmp_path / "train.tsv", n=16)
    out = tmp_path / "clf"
    argv = ["finetune", "--base", str(base), "--train", str(data), "--out", str(out), "--epochs", "1",
            "--batch-size", "8", "--max-length", "8"]
    assert main(argv) == 0
    (out / "stray.txt").write_text("left by the first run's user")
    assert main(argv) == 0  # its own earlier output: replaced whole
    assert not (out / "stray.txt").exists() and (out / "config.json").exists()
    assert not list(tmp_path.glob("clf.*"))  # no temporary directory left beside it
    (out / "attnlab-output.json").unlink()  # now it is not recognisably finetune's
    refused(capsys, argv, "--force")
    assert main([*argv, "--force"]) == 0 and (out / "config.json").exists()


def test_train_refuses_a_directory_it_did_not_write(users_dir, tiny_text, capsys):
    before = snapshot(users_dir)
    refused(capsys, ["train", "--data", tiny_text, "--out", users_dir, *TINY], "not empty")
    assert snapshot(users_dir) == before


def test_an_out_that_is_a_file_is_refused(tiny_text, tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("mine")
    refused(capsys, ["train", "--data", tiny_text, "--out", target, *TINY], "is a file")
    assert target.read_text() == "mine"


def test_a_fresh_run_over_a_data_cache_of_other_text_rebuilds_it(tmp_path, capsys):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("ab" * 3000)
    second.write_text("xyz " * 2000)
    out = tmp_path / "run"
    assert short_train(first, out) == 0
    for leftover in ("last", "best"):  # as if Ctrl-C had come before the first checkpoint
        shutil.rmtree(out / leftover)
    assert short_train(second, out) == 0
    ids = set((out / "data" / "train.bin").read_bytes())
    assert len(ids) == 4  # the four characters of the second file, not the two of the first


def test_resume_refuses_an_override_of_the_model_and_records_train_changes(tiny_text, tmp_path, capsys):
    out = tmp_path / "run"
    assert short_train(tiny_text, out) == 0
    before = snapshot(out)
    refused(capsys, ["train", "--out", out, "--resume", "model.n_layer=5"], "model", "another --out")
    refused(capsys, ["train", "--out", out, "--resume", "--data", tmp_path / "other.txt"], "data")
    assert snapshot(out) == before
    assert main(["train", "--out", str(out), "--resume", "model.n_layer=1", "train.max_steps=6"]) == 0
    assert json.loads((out / "run.json").read_text())["train"]["max_steps"] == 6


def test_resume_drops_metrics_logged_after_the_last_checkpoint(tiny_text, tmp_path):
    out = tmp_path / "run"
    assert short_train(tiny_text, out, "train.log_interval=1") == 0
    with open(out / "metrics.jsonl", "a") as handle:  # a run killed after step 4's checkpoint logged these
        handle.write('{"step": 5, "train_loss": 9.0}\n{"step": 6, "train_lo')
    assert main(["train", "--out", str(out), "--resume", "train.max_steps=6"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if "train_loss" in r]
    assert train_steps == [1, 2, 3, 4, 5, 6] and 9.0 not in [r["train_loss"] for r in records if "train_loss" in r]


def test_ctrl_c_before_the_first_checkpoint_does_not_claim_one(tiny_text, tmp_path, capsys, monkeypatch):
    def interrupt(self, stop_at=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_command.Trainer, "train", interrupt)
    assert main(["train", "--data", str(tiny_text), "--out", str(tmp_path / "run"), *TINY]) == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "before the first checkpoint" in last_line and "intact" not in last_line


@pytest.mark.parametrize("stride", ["0", "-3"])
def test_eval_refuses_a_stride_below_one(stride, tiny_text, tmp_path, capsys):
    out = tmp_path / "run"
    assert short_train(tiny_text, out, "train.max_steps=1", "train.eval_interval=1") == 0
    refused(capsys, ["eval", out, "--data", tiny_text, "--stride", stride], "--stride")
