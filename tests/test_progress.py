"""Long work shows itself: a bar on a terminal, plain lines elsewhere, nothing with --quiet."""

import io

import pytest

import attnlab.progress as progress
from attnlab.cli import main
from attnlab.progress import Progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def stderr(monkeypatch):
    def use(stream):
        monkeypatch.setattr("sys.stderr", stream)
        return stream
    return use


def test_a_terminal_gets_a_bar_with_rate_and_eta(stderr):
    stream = stderr(Terminal())
    with Progress(10, "text", "classifying") as bar:
        bar.update(4)
        bar.note(loss="0.5")
    shown = stream.getvalue()
    assert "classifying" in shown and "4/10" in shown and "text/s" in shown and "loss=0.5" in shown


def test_a_log_file_gets_a_plain_line_at_most_every_interval(stderr, monkeypatch):
    stream = stderr(io.StringIO())
    clock = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    bar = Progress(100, "step", "fine-tuning")
    for _ in range(100):
        clock[0] += 1.0  # a step a second: a line every 30 steps
        bar.update()
        bar.note(loss="1.0")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in stream.getvalue()
    assert lines[0] == "fine-tuning: 30/100 step (30%), 1 step/s, ETA 1:10, loss 1.0"


def test_quiet_shows_nothing_anywhere(stderr, monkeypatch):
    stream = stderr(Terminal())
    monkeypatch.setattr(progress, "LINE_EVERY_S", 0.0)
    with Progress(5, "tok", "scoring", quiet=True) as bar:
        bar.update(5)
    monkeypatch.setattr(progress, "QUIET", True)
    with Progress(5, "tok", "scoring") as bar:
        bar.update(5)
    assert stream.getvalue() == ""


def test_the_command_line_quiet_flag_silences_a_verb(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(progress, "LINE_EVERY_S", 0.0)
    text = tmp_path / "text.txt"
    text.write_text("to be or not to be, that is the question " * 20)
    base = ["train", "--data", str(text), "model.n_layer=1", "model.d_model=16", "model.n_head=2",
            "model.max_seq_len=16", "train.max_steps=2", "train.eval_interval=2", "train.eval_batches=1"]
    assert main([*base, "--out", str(tmp_path / "loud")]) == 0
    assert "training: 2/2 step" in capsys.readouterr().err
    assert main([*base, "--quiet", "--out", str(tmp_path / "quiet")]) == 0
    assert "training:" not in capsys.readouterr().err
