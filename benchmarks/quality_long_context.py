"""Quality check: the long-context models against a full-attention GPT of about the same size.

    ATTNLAB_DATA=/work/shared/data python benchmarks/quality_long_context.py [--steps 600] [--jobs 2]
    ... --gpt-position rotary --models "GPT (full attention); sliding-window GPT (window 128)"

Every model is trained with `attnlab train` (the command line users run) on tiny Shakespeare,
character level, context 1024, with the same size, seed (--seed), data order, batch, schedule
and steps; the script prints each run's best validation loss (the same 20 validation batches
for all) and its gap to the full-attention GPT (target: within 0.05). A model's own options come
after the shared size, so that it may set its own (the Mamba matches the GPT's parameter count
with a width of its own). Runs use one thread each; --jobs runs that many at once, each timed
from its start to its own end (the times compare only between runs that did not share a core).
--gpt-position sets the positions of both GPTs (learned or rotary); --models picks a subset,
which must include the full-attention GPT. Each run's output stays beside its run directory in
--out, as <name>.log and <name>.err.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ATTNLAB_DATA", ROOT.parent / "shared" / "data"))
SIZE = ["model.n_layer=2", "model.n_head=4", "model.d_model=128", "model.max_seq_len=1024"]
BASELINE = "GPT (full attention)"
XL = ["model.family=transformer_xl", "model.segment_length=256"]
GPT_SUBLAYERS = ["model.prenorm=true", "model.activation=gelu"]  # the GPT's pre-LN and GELU
REFORMER = ["model.family=reformer", "model.chunk_length=64", "model.n_buckets=16"]
ROTARY_GELU = ["model.position=rotary", "model.activation=gelu"]  # the rotary GPT's positions and GELU
LOCAL_LSH = ["model.attn_layers=[local,lsh]", "model.local_chunk_length=64"]  # the paper's enwik8 layout
MODELS = {
    BASELINE: ["model.family=gpt"],
    "sliding-window GPT (window 128)": ["model.family=gpt", "model.attn_window=128"],
    "Transformer-XL (segment 256, memory 256)": XL + ["model.mem_len=256"],
    "Transformer-XL (segment 256, memory 256, pre-LN, GELU)": XL + ["model.mem_len=256"] + GPT_SUBLAYERS,
    # memory 768: every query sees up to 1024 tokens, the GPT's context
    "Transformer-XL (segment 256, memory 768)": XL + ["model.mem_len=768"],
    "Transformer-XL (segment 256, memory 768, pre-LN, GELU)": XL + ["model.mem_len=768"] + GPT_SUBLAYERS,
    "Reformer (LSH, chunk 64, 16 buckets, 2 hashes)": REFORMER + ["model.n_hashes=2", "model.axial_shape=[32,32]",
                                                                  "model.axial_dims=[64,64]"],
    "Reformer (LSH, chunk 64, 16 buckets, 2 hashes, rotary, GELU)": REFORMER + ["model.n_hashes=2"] + ROTARY_GELU,
    "Reformer (local + LSH layers, rotary, GELU)": REFORMER + LOCAL_LSH + ["model.n_hashes=2"] + ROTARY_GELU,
    # more hashing rounds: closer to full attention, at twice the LSH cost
    "Reformer (local + LSH layers, 4 hashes, rotary, GELU)": REFORMER + LOCAL_LSH + ["model.n_hashes=4"] + ROTARY_GELU,
    # 3 SSM layers of width 136 hold 401,880 parameters, the rotary GPT's 405,120 (2 attention + MLP layers)
    "Mamba (3 layers, d_model 136)": ["model.family=mamba", "model.n_layer=3", "model.d_model=136"],
}


def start(name, options, common, out):
    """Launch one training run; its output goes to <out>/<name>.log (stdout, then the JSON summary)
    and <out>/<name>.err (stderr)."""
    run = out / re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "attnlab.cli", "train", "--data", str(DATA / "tinyshakespeare.txt"),
               "--out", str(run), *SIZE, *options, *common]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    with open(f"{run}.log", "w") as stdout, open(f"{run}.err", "w") as stderr:
        return subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env), run


def finish(name, process, run, seconds):
    """-> (best validation loss, seconds, the run's first line of description)."""
    stdout, stderr = Path(f"{run}.log").read_text(), Path(f"{run}.err").read_text()
    if process.returncode != 0:
        sys.exit(f"{name} failed:\n{stderr[-2000:]}")
    result = json.loads(stdout[stdout.index("{"):])  # the run's closing JSON summary
    print(json.dumps({"model": name, **result}), file=sys.stderr, flush=True)
    return result["best_val_loss"], seconds, stderr.splitlines()[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=1, help="trainings run at once, one thread each")
    parser.add_argument("--out", default=str(ROOT / "runs" / "quality_long_context"))
    parser.add_argument("--gpt-position", choices=["learned", "rotary"], default="learned")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and data order of every run")
    parser.add_argument("--models", default=";".join(MODELS), help="names from MODELS, separated by ';'")
    args = parser.parse_args()
    names = [name.strip() for name in args.models.split(";")]
    if BASELINE not in names or not set(names) <= set(MODELS):
        parser.error(f"--models: names from {list(MODELS)}, including {BASELINE!r}")
    common = [f"train.max_steps={args.steps}", f"train.batch_size={args.batch_size}", "train.lr=0.002",
              f"train.warmup_steps={args.steps // 10}", f"train.eval_interval={args.steps // 4}",
              "train.eval_batches=20", "train.progress=false", f"train.seed={args.seed}"]
    gpt_position = [f"model.position={args.gpt_position}"]
    pending = [(name, MODELS[name] + (gpt_position if "model.family=gpt" in MODELS[name] else [])) for name in names]
    running, results = {}, {}  # name -> (process, run directory, start time)
    while pending or running:
        while pending and len(running) < args.jobs:
            name, options = pending.pop(0)
            running[name] = (*start(name, options, common, Path(args.out)), time.perf_counter())
        time.sleep(1)
        for name, (process, run, started) in list(running.items()):
            if process.poll() is not None:  # timed when it ends, whichever ends first
                del running[name]
                results[name] = finish(name, process, run, time.perf_counter() - started)
    base = results[BASELINE][0]
    print(f"GPT positions: {args.gpt_position}; seed {args.seed}\n")
    print("| model | best val loss | gap to GPT | train time |\n|---|---|---|---|")
    for name in names:
        loss, seconds, _ = results[name]
        print(f"| {name} | {loss:.4f} | {loss - base:+.4f} | {seconds / 60:.1f} min |")
    for name in names:
        print(f"{name}: {results[name][2]}")


if __name__ == "__main__":
    main()
