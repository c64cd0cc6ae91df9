"""The standing test of bad input: every user mistake is one line on stderr and exit code 2, never
a traceback, and leaves a watched run directory byte-identical. Each row is run in-process through
the CLI; a new refusal adds a row."""

import hashlib
import json
import pickle
import shutil
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from attnlab.checkpoint import load_checkpoint, save_checkpoint
from attnlab.cli import main
from attnlab.models.base import build_model, preset

from .conftest import tiny_corpus

TINY = ["model.n_layer=1", "model.n_head=2", "model.d_model=32", "model.max_seq_len=32", "train.batch_size=4",
        "train.eval_batches=2", "train.progress=false", "train.max_steps=4", "train.eval_interval=2"]


class Payload:
    """A pickle that would run a command when unpickled without weights_only."""

    def __reduce__(self):
        return (print, ("this must never run",))


def digest(directory) -> dict:
    """Every file and folder under `directory` -> a hash of its bytes (None for a folder)."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(directory.rglob("*"))}


def with_last(run, root, name, model, tokenizer):
    """A copy of `run` whose last/ holds `model` (with the run's own trainer.pt)."""
    copy = root / name
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "last")
    save_checkpoint(copy / "last", model, tokenizer)
    shutil.copy(run / "last" / "trainer.pt", copy / "last" / "trainer.pt")
    return copy


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The watched run, and the bad inputs aimed at it, made once for the module."""
    root = tmp_path_factory.mktemp("bad_input")
    text = root / "tiny.txt"
    text.write_text(tiny_corpus())
    assert main(["train", "--data", str(text), "--out", str(root / "run"), *TINY]) == 0
    run = root / "run"
    _, tokenizer = load_checkpoint(run / "last")
    (root / "one.txt").write_text("x")
    (root / "onedir").mkdir()
    (root / "onedir" / "a.txt").write_text("x")
    (root / "afile").write_text("not a folder")
    (root / "bad.yaml").write_text("model: [1, 2\n  foo: : bar\n")
    xl = build_model(preset("transformer-xl-tiny", vocab_size=tokenizer.vocab_size))
    with_last(run, root, "mixed", xl, tokenizer)
    llama = build_model(preset("llama-nano", n_layer=1, n_head=2, n_kv_head=2, d_model=32, vocab_size=tokenizer.vocab_size))
    save_checkpoint(root / "llama", llama, tokenizer)
    evil = root / "evil"
    shutil.copytree(run, evil)
    (evil / "last" / "trainer.pt").write_bytes(pickle.dumps(Payload()))
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    places = {name: str(root / name) for name in ("run", "onedir", "afile", "mixed", "llama", "evil", "new")}
    yield {**places, "one": str(root / "one.txt"), "text": str(text), "yaml": str(root / "bad.yaml"),
           "busy": str(busy.getsockname()[1])}
    busy.close()


CASES = [
    # data too short to split into training and validation
    (["train", "--data", "{one}", "--out", "{new}", *TINY], "too few to split"),
    (["train", "--data", "{onedir}", "--out", "{new}", *TINY], "too few to split"),
    (["train", "--data", "{text}", "--out", "{new}", *TINY, "tokenizer.kind=bpe", "tokenizer.vocab_size=-5"],
     "vocab_size must be a positive integer"),
    # --out that is a file, or lies under one (as root, the one way to make a path unwritable)
    (["train", "--data", "{text}", "--out", "{afile}", *TINY], "is a file"),
    (["train", "--data", "{text}", "--out", "{afile}/run", *TINY], "is a file"),
    (["demo", "--out", "{afile}/run"], "is a file"),
    (["convert", "export", "{run}", "{afile}/hf"], "is a file"),
    (["finetune", "--base", "{run}", "--train", "{text}", "--out", "{afile}/ft"], "is a file"),
    (["compress", "{run}", "--train", "{text}", "--val", "{text}", "--out", "{afile}/c"], "is a file"),
    # a run whose last/ holds another family's model
    (["train", "--out", "{mixed}", "--resume", "train.max_steps=6"], "holds a transformer_xl model"),
    (["train", "--out", "{evil}", "--resume", "train.max_steps=6"], "not a plain tensor file"),
    (["serve", "{run}", "--port", "99999"], "--port must be at most 65535"),
    (["serve", "{run}", "--port", "{busy}"], "cannot listen on 127.0.0.1:"),
    (["train", "--config", "{yaml}", "--out", "{new}"], "at line 2, column 6"),
    (["convert", "export", "{llama}", "{new}-hf"], "positions are rotary"),
    # a sample of the refusals other tests hold, aimed at the watched run where they can be
    (["train", "--data", "{text}", "--out", "{run}", *TINY], "already holds a run"),
    (["convert", "export", "{run}", "{run}"], "already exists and is not empty"),
    (["generate", "{run}", "--prompt", "ß"], "never saw"),
    (["eval", "{run}", "--data", "/nonexistent.txt"], "does not exist"),
    (["serve", "{run}", "--max-batch", "0"], "--max-batch must be a positive integer"),
    (["embed", "{run}/missing.txt"], "does not exist"),
    (["search", "{run}/missing.txt", "query"], "does not exist"),
    (["train", "trian.lr=5", "--out", "{new}"], "unknown section(s) trian"),
    (["generate", "/nonexistent"], "does not exist"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[f"{i}-{c[0][0]}" for i, c in enumerate(CASES)])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(argv, message, files, capsys):
    watched = Path(files["run"])
    before = digest(watched)
    capsys.readouterr()
    code = main([a.format(**files) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith(f"attnlab {argv[0]}: error: ") and message in err, err
    assert digest(watched) == before


def test_under_torchrun_only_rank_0_prints_a_user_error(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    assert main(["generate", "/nonexistent"]) == 2
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    assert main(["generate", "/nonexistent"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_search_rebuilds_an_index_whose_key_matches_but_shapes_do_not(tmp_path, capsys):
    doc = tmp_path / "doc.txt"
    doc.write_text("bread and butter\nthe football match\n")
    assert main(["search", str(doc), "butter on bread", "--json"]) == 0
    index = tmp_path / "doc.txt.attnlab-index.npz"
    with np.load(index) as data:
        meta = data["meta"].copy()
    np.savez(index, vectors=np.zeros((2, 7), np.float32), meta=meta)  # same key, vectors of another width
    capsys.readouterr()
    assert main(["search", str(doc), "butter on bread", "--json"]) == 0
    out, err = capsys.readouterr()
    assert "built index" in err and json.loads(out)["results"][0]["passage"] == "bread and butter"


def test_a_user_error_under_two_ranks_is_one_line_from_rank_0(tmp_path):
    """Rank 0 fails inside main_first (no data); the other rank, waiting there, exits 2 quietly."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "OMP_NUM_THREADS": "1",
           "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    procs = [subprocess.Popen([sys.executable, "-m", "attnlab.cli", "train", "--out", str(tmp_path / "run"), *TINY],
                              env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for rank in range(2)]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [2, 2], errs
    assert errs[0].count("\n") == 1 and errs[0].startswith("attnlab train: error: ") and errs[1] == "", errs
