"""Data-parallel training: two gloo processes on CPU end where one process with the same
global batch ends, and a run killed with SIGKILL resumes to the uninterrupted result.

Each rank is a fresh `python -m attnlab.cli train` process with the environment torchrun would
give it; a slow test runs it under torchrun itself.
"""

import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from attnlab.data.corpus import LMBlocks
from attnlab.training.distributed import RankBatches

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(f"the {a} sat on the {b} number {i % 10}." for i, (a, b) in
                              enumerate([("cat", "mat"), ("dog", "log"), ("bird", "wire")] * 100)))
    return path


def train_args(corpus, out, batch_size, steps, *extra, eval_interval=3):
    return ["train", "--data", str(corpus), "--out", str(out), "model.n_layer=2", "model.n_head=2",
            "model.d_model=32", "model.max_seq_len=32", f"train.batch_size={batch_size}", f"train.max_steps={steps}",
            "train.grad_accum=2", "train.warmup_steps=2", f"train.eval_interval={eval_interval}",
            "train.eval_batches=2", "train.log_interval=1", "train.progress=false", *extra]


# fp32 sums in a different order (one batch of 8 vs two of 4, then an all-reduce) differ by
# ~1e-7 per step and Adam's normalised updates carry that forward: 4 steps at lr 1e-3 stay
# near 1e-7; 6 steps at lr 3e-3 reach ~1e-6.
EQUIVALENCE = ("train.lr=0.001",)


def cli_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}


def launch(world, argv):
    """One fresh interpreter per rank with the environment torchrun gives it (never a fork of
    this test process, whose threads and locks a child would inherit)."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = cli_env()
        if world > 1:
            env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(port))
        log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a rank never blocks on a full buffer
        procs.append(subprocess.Popen([sys.executable, "-m", "attnlab.cli", *argv], env=env,
                                      stdout=subprocess.DEVNULL, stderr=log))
        procs[-1].log = log
    return procs


def stderr_of(proc) -> str:
    proc.log.seek(0)
    return proc.log.read()


def run(world, argv, timeout=300):
    procs = launch(world, argv)
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:  # a hung rank fails the test instead of holding pytest open
            p.kill()
            p.wait()
    codes = [p.returncode for p in procs]
    assert codes == [0] * world, "\n".join(f"rank {rank}: {stderr_of(p)[-2000:]}" for rank, p in enumerate(procs))


def weights(run_dir):
    return load_file(Path(run_dir) / "last" / "model.safetensors")


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_rank_batches_split_the_global_batch(corpus):
    ids = torch.arange(1000).numpy()
    global_batch = LMBlocks({"train": ids}, block_size=8, batch_size=6).sample("train", torch.Generator().manual_seed(1))
    shards = [RankBatches(LMBlocks({"train": ids}, 8, 3), rank, 2).sample("train", torch.Generator().manual_seed(1))
              for rank in range(2)]
    for key in global_batch.inputs:
        assert torch.equal(torch.cat([s.inputs[key] for s in shards]), global_batch.inputs[key])
    assert [s.examples for s in shards] == [3, 3] and sum(s.tokens for s in shards) == global_batch.tokens


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(corpus, tmp_path):
    run(1, train_args(corpus, tmp_path / "one", 8, 4, *EQUIVALENCE, eval_interval=4))
    one_weights = weights(tmp_path / "one")
    one_log = (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()
    for strategy in ("ddp", "fsdp"):
        out = tmp_path / strategy
        run(2, train_args(corpus, out, 4, 4, *EQUIVALENCE, f"train.distributed={strategy}", eval_interval=4))
        assert max_diff(one_weights, weights(out)) <= 1e-6, strategy
        two_log = (out / "metrics.jsonl").read_text().splitlines()
        assert len(one_log) == len(two_log)  # rank 0 alone wrote the log: no duplicate records
        for a, b in zip(map(json.loads, one_log), map(json.loads, two_log)):
            for key in ("train_loss", "val_loss"):
                if key in a:
                    assert a[key] == pytest.approx(b[key], abs=1e-5)


@pytest.mark.parametrize("strategy", ["ddp", pytest.param("fsdp", marks=pytest.mark.slow)])
def test_run_killed_with_sigkill_resumes_to_the_uninterrupted_result(corpus, tmp_path, strategy):
    steps, option = 9, f"train.distributed={strategy}"
    run(2, train_args(corpus, tmp_path / "whole", 4, steps, option))
    kill_at = random.Random().randint(4, steps - 2)
    procs = launch(2, train_args(corpus, tmp_path / "killed", 4, steps, option))
    log = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (log.exists() and any(json.loads(line)["step"] >= kill_at for line in log.read_text().splitlines())):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.01)
    for p in procs:
        p.kill()  # SIGKILL
        p.wait()
    saved = torch.load(tmp_path / "killed" / "last" / "trainer.pt", weights_only=True)["step"]
    assert saved < steps, f"killed at step {kill_at}, but the run had already finished"
    run(2, train_args(corpus, tmp_path / "killed", 4, steps, option) + ["--resume"])
    assert max_diff(weights(tmp_path / "whole"), weights(tmp_path / "killed")) == 0.0, f"killed at {kill_at}"


@pytest.mark.slow
def test_torchrun_launch_matches_one_process(corpus, tmp_path):
    env = cli_env()
    cli = [sys.executable, "-m", "attnlab.cli"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "attnlab.cli"]
    subprocess.run(cli + train_args(corpus, tmp_path / "one", 8, 4, *EQUIVALENCE, eval_interval=4), env=env,
                   check=True, capture_output=True)
    subprocess.run(torchrun + train_args(corpus, tmp_path / "two", 4, 4, *EQUIVALENCE, eval_interval=4), env=env,
                   check=True, capture_output=True)
    assert max_diff(weights(tmp_path / "one"), weights(tmp_path / "two")) <= 1e-6


@pytest.mark.parametrize("preset", ["transformer-xl-tiny", "reformer-tiny"])
def test_fsdp_shards_each_familys_own_block(corpus, tmp_path, preset):
    """FSDP's unit is the family's block from its spec (Transformer-XL's relative blocks, the
    Reformer's reversible blocks), and two sharded processes end where one process ends."""
    run(1, train_args(corpus, tmp_path / "one", 8, 4, *EQUIVALENCE, "--preset", preset, eval_interval=4))
    run(2, train_args(corpus, tmp_path / "fsdp", 4, 4, *EQUIVALENCE, "--preset", preset, "train.distributed=fsdp",
                      eval_interval=4))
    assert max_diff(weights(tmp_path / "one"), weights(tmp_path / "fsdp")) <= 1e-6


def test_the_readme_torchrun_command_runs_as_written(tmp_path):
    """The README's one-machine command, on 2 CPU processes for 2 steps instead of 4 GPUs for 2000."""
    readme = (REPO / "README.md").read_text()
    command = readme.split("torchrun --standalone", 1)[1].split("\n```", 1)[0].replace("\\\n", " ").split()
    args = command[command.index("train"):]
    args[args.index("--out") + 1] = str(tmp_path / "gpt")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                "attnlab.cli"]
    done = subprocess.run(torchrun + args + ["train.max_steps=2", "train.eval_interval=2", "train.eval_batches=1",
                                             "train.device=cpu", "train.progress=false"],
                          cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "gpt" / "last" / "model.safetensors").is_file()
