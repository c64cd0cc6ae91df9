"""The trainer: one loop for every family.

It needs a model whose `model(**batch.inputs).loss` is the training loss, and a batch source
with `sample(split, generator) -> Batch` (data/batch.py) for the splits "train" and "val"; the
batch also says how many real tokens it holds, for tokens/s. A run directory holds:

    last/           the latest checkpoint, with trainer.pt for an exact resume
    best/           the checkpoint with the lowest validation loss so far
    metrics.jsonl   one JSON object per logged step and per evaluation
    loss.png        the train and validation loss curves
"""

import contextlib
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..checkpoint import load_trainer_state, save_checkpoint, WEIGHTS_FILE
from ..config import Config
from .distributed import STRATEGIES, SingleProcess
from .optim import SCHEDULES, lr_at, make_optimizer
from .plot import plot_metrics

PRECISIONS = ("fp32", "bf16")
METRICS_FILE = "metrics.jsonl"


@dataclasses.dataclass
class TrainConfig(Config):
    section = "train"
    max_steps: int = 1000
    batch_size: int = 12
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    schedule: str = "cosine"
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 disables clipping
    eval_interval: int = 200
    eval_batches: int = 20
    log_interval: int = 10
    precision: str = "fp32"
    compile: bool = False
    fused_optimizer: bool = False
    device: str = "auto"
    seed: int = 1337
    progress: bool = True
    distributed: str = "ddp"  # under torchrun: "ddp", or "fsdp" to shard a model too big for one device
    patience: int = 0  # stop after this many evaluations without a lower validation loss (0: never)

    def validate(self):
        self.require_positive("max_steps", "batch_size", "grad_accum", "eval_interval", "eval_batches", "log_interval")
        if self.warmup_steps < 0 or self.lr <= 0 or self.min_lr < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise self.invalid("warmup_steps, min_lr, weight_decay and grad_clip must be >= 0 and lr > 0")
        if self.patience < 0:
            raise self.invalid(f"patience must be >= 0 evaluations (0: never stop early), got {self.patience}")
        self.require_choice("schedule", SCHEDULES)
        self.require_choice("precision", PRECISIONS)
        self.require_choice("distributed", STRATEGIES)

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


class Trainer:
    def __init__(self, model, config: TrainConfig, batches, run_dir, tokenizer=None, extra_json=None,
                 parallel=None, block_class: type = None):
        """`parallel` (training/distributed.py) spreads the run over processes; by default one.
        `block_class`: the model's repeated block, FSDP's unit of sharding (None: one unit)."""
        self.config = config
        self.parallel = parallel or SingleProcess()
        self.device = self.parallel.device or config.resolved_device()
        self.model = model.to(self.device)
        self.batches = self.parallel.shard(batches)
        self.run_dir = Path(run_dir)
        self.tokenizer = tokenizer
        self.extra_json = extra_json or {}
        wrapped = self.parallel.wrap(self.model, block_class)  # before the optimiser: FSDP replaces the parameters
        self.optimizer = make_optimizer(self.model, config.lr, config.weight_decay, (config.beta1, config.beta2),
                                        fused=config.fused_optimizer)
        self.step = 0
        self.best_val = math.inf
        self.evals_since_best = 0
        self.data_generator = torch.Generator().manual_seed(config.seed)
        torch.manual_seed(config.seed)
        self.forward = torch.compile(wrapped) if config.compile else wrapped

    # -- state ------------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "step": self.step,
            "best_val": self.best_val,
            "evals_since_best": self.evals_since_best,
            "optimizer": self.parallel.optimizer_state(self.model, self.optimizer),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "data_rng": self.data_generator.get_state(),
            "train_config": self.config.to_dict(),
        }

    def resume(self, checkpoint_dir):
        """Continue exactly where the checkpoint left off: weights, optimiser, schedule, RNG."""
        state = load_trainer_state(checkpoint_dir)
        self.parallel.load_weights(self.model, Path(checkpoint_dir) / WEIGHTS_FILE)
        self.parallel.load_optimizer_state(self.model, self.optimizer, state["optimizer"])
        self.step, self.best_val = state["step"], state["best_val"]
        self.evals_since_best = state.get("evals_since_best", 0)  # absent from checkpoints before patience
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.data_generator.set_state(state["data_rng"])
        if self.parallel.is_main:
            drop_metrics_after(self.run_dir / METRICS_FILE, self.step)

    def save(self, name: str, with_state: bool):
        """Every rank calls this (gathering sharded state is collective); rank 0 writes."""
        state = self.state() if with_state else None
        model = self.parallel.full_model(self.model)
        if self.parallel.is_main:
            save_checkpoint(self.run_dir / name, model, self.tokenizer, trainer_state=state,
                            extra_json=self.extra_json)

    # -- loop -------------------------------------------------------------------------------
    def autocast(self):
        if self.config.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self):
        """One optimiser step over grad_accum micro-batches -> (mean loss, tokens seen)."""
        c = self.config
        lr = lr_at(self.step, c.schedule, c.lr, c.min_lr, c.warmup_steps, c.max_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        total, tokens = 0.0, 0
        for micro in range(c.grad_accum):
            batch = self.batches.sample("train", self.data_generator).to(self.device)
            with self.parallel.no_sync(self.forward, last_micro_step=micro == c.grad_accum - 1):
                with self.autocast():
                    loss = self.forward(**batch.inputs).loss / c.grad_accum
                loss.backward()
            total += loss.item()
            tokens += batch.tokens
        if c.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return total, tokens

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over the same `eval_batches` validation batches every time."""
        self.model.eval()
        generator = torch.Generator().manual_seed(self.config.seed + 1)
        losses = []
        for _ in range(self.config.eval_batches):
            batch = self.batches.sample("val", generator).to(self.device)
            with self.autocast():
                losses.append(self.forward(**batch.inputs).loss.item())
        self.model.train()
        return self.parallel.mean(sum(losses) / len(losses))

    def train(self, stop_at=None) -> dict:
        """Run to max_steps (or stop_at); returns the last metrics. Ctrl-C stops cleanly with
        the last checkpoint intact."""
        c = self.config
        end = min(c.max_steps, stop_at or c.max_steps)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        metrics_path = self.run_dir / METRICS_FILE
        bar = tqdm(total=end, initial=self.step, disable=not (c.progress and self.parallel.is_main),
                   dynamic_ncols=True, unit="step")
        window_tokens, window_start, last = 0, time.perf_counter(), {}
        try:
            while self.step < end:
                loss, tokens = self.train_step()
                window_tokens += tokens
                if self.step % c.log_interval == 0 or self.step == end:
                    elapsed = time.perf_counter() - window_start
                    last = {"step": self.step, "train_loss": self.parallel.mean(loss),
                            "lr": self.optimizer.param_groups[0]["lr"],
                            "tokens_per_s": window_tokens * self.parallel.world_size / max(elapsed, 1e-9)}
                    self._log(metrics_path, last)
                    bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{last['tokens_per_s']:.0f}")
                    window_tokens, window_start = 0, time.perf_counter()
                bar.update(1)
                if self.step % c.eval_interval == 0 or self.step == end:
                    val = self.evaluate()
                    last = {**last, "step": self.step, "val_loss": val}
                    self._log(metrics_path, {"step": self.step, "val_loss": val})
                    self.evals_since_best += 1
                    if val < self.best_val:
                        self.best_val, self.evals_since_best = val, 0
                        self.save("best", with_state=False)
                    self.save("last", with_state=True)
                    if self.parallel.is_main:
                        plot_metrics(metrics_path, self.run_dir / "loss.png")
                        bar.write(f"step {self.step}: val loss {val:.4f} (best {self.best_val:.4f})",
                                  file=sys.stderr)  # stdout is for the command's JSON
                    window_tokens, window_start = 0, time.perf_counter()  # tokens/s counts training only
                    if c.patience and self.evals_since_best >= c.patience:
                        bar.write(f"step {self.step}: no lower val loss in {c.patience} evaluations; stopping",
                                  file=sys.stderr)
                        break
        finally:
            bar.close()
        return last

    def _log(self, path, record):
        if self.parallel.is_main:
            with open(path, "a") as handle:
                handle.write(json.dumps(record) + "\n")


def drop_metrics_after(path: Path, step: int):
    """Rewrite the metrics file (atomically) without the records past `step`: those of a run
    killed after its last checkpoint, which the resumed run logs again."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if _logged_by(line, step)]
    if len(kept) == len(lines):
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept))
    tmp.replace(path)


def _logged_by(line: str, step: int) -> bool:
    """Whether the record `line` was logged at or before `step` (a torn last line was not)."""
    try:
        return json.loads(line)["step"] <= step
    except (ValueError, KeyError, TypeError):
        return False
