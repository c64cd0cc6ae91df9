"""The Trainer's loop around its steps (logging, progress, signal and budget checks, the evaluation
and checkpoint at the end): steps/s of Trainer.train against bare train_step calls, interleaved, on
the shakespeare_char model (one thread). Run it in two trees to compare their loops:

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/trainer_loop_overhead.py
"""

import os
import statistics
import tempfile
import time

import torch

from attnlab.training import Trainer
from attnlab.training.tasks import resolve_run, setup_task
torch.set_num_threads(1)
text = os.path.join(os.environ.get("ATTNLAB_DATA", "../shared/data"), "tinyshakespeare.txt")
run = resolve_run({"task": "lm", "data": {"path": text, "val_fraction": 0.1}, "tokenizer": {"kind": "char"},
                   "model": {"n_layer": 4, "n_head": 4, "d_model": 128, "max_seq_len": 64, "dropout": 0.0},
                   "train": {"max_steps": 10**6, "batch_size": 12, "eval_interval": 10**6, "log_interval": 10, "eval_batches": 1,
                             "progress": True, "warmup_steps": 0}})
d = tempfile.mkdtemp()
model, tok, batches = setup_task(run, d, False)
trainer = Trainer(model, run.train, batches, d, tok)
N = 100


def bare():
    t = time.perf_counter()
    for _ in range(N):
        trainer.train_step()
    return N / (time.perf_counter() - t)


def loop():
    t = time.perf_counter()
    trainer.train(stop_at=trainer.step + N)
    return N / (time.perf_counter() - t)


trainer.train_step()  # warm-up
bare_rates, loop_rates = [], []
for _ in range(5):
    bare_rates.append(bare())
    loop_rates.append(loop())
ratios = [looped / plain for looped, plain in zip(loop_rates, bare_rates)]
print(f"steps/s: bare train_step {statistics.median(bare_rates):.1f}, Trainer.train loop "
      f"{statistics.median(loop_rates):.1f}; "
      f"loop / bare median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")
