"""The trainer: one loop for every family.

It needs a model whose `model(**batch.inputs).loss` is the training loss, and a batch source
with `sample(split, generator) -> Batch` (data/batch.py) for the splits "train" and "val"; the
batch also says how many real tokens it holds, for tokens/s. With `train.teacher` (a causal LM)
the training loss is the distillation loss against the teacher's logits instead, and the model's
output also needs `.logits`. A run directory holds:

    last/           the latest checkpoint, with trainer.pt for an exact resume
    best/           the checkpoint with the lowest validation loss so far
    metrics.jsonl   one JSON object per logged step and per evaluation
    loss.png        the train and validation loss curves
"""

import contextlib
import dataclasses
import json
import math
import signal
import threading
import time
from pathlib import Path

import torch

from ..checkpoint import load_checkpoint, load_trainer_state, resolve_checkpoint, save_checkpoint, WEIGHTS_FILE
from ..compression.distill import distillation_loss
from ..config import Config
from ..errors import UserError
from ..models.base import CAUSAL_LM, family_spec
from ..progress import Progress
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
    log_interval: int = 10  # steps; the logged train_loss is the token-weighted mean over them
    checkpoint_interval: int = 0  # steps between saves of last/ besides evaluations; 0: at evaluations only
    max_minutes: float = 0  # wall-clock budget; the schedule decays to fit it; 0: none (max_steps only)
    precision: str = "fp32"
    compile: bool = False
    fused_optimizer: bool = False
    device: str = "auto"
    seed: int = 1337
    progress: bool = True  # a bar on a terminal, a line every half minute elsewhere (--quiet: neither)
    distributed: str = "ddp"  # under torchrun: "ddp", or "fsdp" to shard a model too big for one device
    patience: int = 0  # stop after this many evaluations without a lower validation loss (0: never)
    # Knowledge distillation of a causal LM: the model also learns the teacher checkpoint's next-token
    # distributions, softened by distill_temperature (lm task; the student takes the teacher's tokenizer).
    teacher: str = None  # a checkpoint or run directory (None: no teacher)
    distill_temperature: float = 1.0
    distill_alpha: float = 0.0  # weight of the labels' loss; the teacher's KL gets 1 - distill_alpha

    def validate(self):
        self.require_positive("max_steps", "batch_size", "grad_accum", "eval_interval", "eval_batches", "log_interval")
        if self.checkpoint_interval < 0 or self.max_minutes < 0:
            raise self.invalid("checkpoint_interval and max_minutes must be >= 0 (0: off)")
        if self.warmup_steps < 0 or self.lr <= 0 or self.min_lr < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise self.invalid("warmup_steps, min_lr, weight_decay and grad_clip must be >= 0 and lr > 0")
        if self.patience < 0:
            raise self.invalid(f"patience must be >= 0 evaluations (0: never stop early), got {self.patience}")
        self.require_choice("schedule", SCHEDULES)
        self.require_choice("precision", PRECISIONS)
        self.require_choice("distributed", STRATEGIES)
        if self.distill_temperature <= 0 or not 0 <= self.distill_alpha <= 1:
            raise self.invalid(f"distill_temperature must be > 0 and distill_alpha in [0, 1], got "
                               f"{self.distill_temperature} and {self.distill_alpha}")

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


class Trainer:
    def __init__(self, model, config: TrainConfig, batches, run_dir, tokenizer=None, extra_json=None,
                 parallel=None, block_class: type = None, val_scores=None):
        """`parallel` (training/distributed.py) spreads the run over processes; by default one.
        `block_class`: the model's repeated block, FSDP's unit of sharding (None: one unit).
        `val_scores(model) -> dict`: scores logged beside each evaluation's val_loss (e.g. accuracy)."""
        self.config = config
        self.parallel = parallel or SingleProcess()
        self.device = self.parallel.device or config.resolved_device()
        self.model = model.to(self.device)
        self.batches = self.parallel.shard(batches)
        self.run_dir = Path(run_dir)
        self.tokenizer = tokenizer
        self.extra_json = extra_json or {}
        self.val_scores = val_scores
        self.teacher = load_teacher(config.teacher, model).to(self.device) if config.teacher else None
        wrapped = self.parallel.wrap(self.model, block_class)  # before the optimiser: FSDP replaces the parameters
        self.optimizer = make_optimizer(self.model, config.lr, config.weight_decay, (config.beta1, config.beta2),
                                        fused=config.fused_optimizer)
        self.step = 0
        self.best_val = math.inf
        self.seconds = 0.0  # wall-clock time in the training loop so far, over resumes: what max_minutes budgets
        self.stop_signal = None  # the signal that asked the run to stop after its current step
        self.evals_since_best = 0
        self.data_generator = torch.Generator().manual_seed(config.seed)
        torch.manual_seed(config.seed)
        self.forward = torch.compile(wrapped) if config.compile else wrapped

    # -- state ------------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "step": self.step,
            "best_val": self.best_val,
            "seconds": self.seconds,
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
        self.step, self.best_val, self.seconds = state["step"], state["best_val"], state.get("seconds", 0.0)
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
        lr = lr_at(self.step, c.schedule, c.lr, c.min_lr, c.warmup_steps, c.max_steps, done=self.budget_spent())
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        total, tokens = 0.0, 0
        for micro in range(c.grad_accum):
            batch = self.batches.sample("train", self.data_generator).to(self.device)
            with self.parallel.no_sync(self.forward, last_micro_step=micro == c.grad_accum - 1):
                with self.autocast():
                    loss = self.training_loss(batch) / c.grad_accum
                loss.backward()
            total += loss.item()
            tokens += batch.tokens
        if c.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return total, tokens

    def training_loss(self, batch):
        """The model's own loss, or with a teacher the distillation loss (the validation loss stays the
        model's own, so runs with and without a teacher compare)."""
        output = self.forward(**batch.inputs)
        if self.teacher is None:
            return output.loss
        with torch.no_grad():
            inputs = {name: value for name, value in batch.inputs.items() if name not in ("targets", "labels")}
            teacher_logits = self.teacher(**inputs).logits  # (B, T, V), like the student's
        c = self.config
        return distillation_loss(output.logits, teacher_logits, output.loss, c.distill_temperature,
                                 c.distill_alpha).total

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

    def budget_spent(self) -> float:
        """The fraction of train.max_minutes used (0 without a budget)."""
        return self.seconds / (60 * self.config.max_minutes) if self.config.max_minutes else 0.0

    def train(self, stop_at=None) -> dict:
        """Run to max_steps (or stop_at, or the end of the time budget, with an evaluation and a
        checkpoint at the end); returns the last metrics. SIGINT or SIGTERM ends the current step,
        saves last/ and raises `Stopped`; a second Ctrl-C aborts at once, the last checkpoint intact."""
        c = self.config
        end = min(c.max_steps, stop_at or c.max_steps)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        metrics_path = self.run_dir / METRICS_FILE
        bar = Progress(end, "step", "training", quiet=not (c.progress and self.parallel.is_main), initial=self.step)
        window, last = LossWindow(), {}
        clock = time.perf_counter()
        try:
            with self.stop_on_signals():
                while self.step < end:
                    loss, tokens = self.train_step()
                    window.add(loss, tokens)
                    now = time.perf_counter()
                    self.seconds, clock = self.seconds + now - clock, now
                    stopping = self.parallel.mean(float(self.stop_signal is not None)) > 0  # every rank stops alike
                    finishing = self.step == end or self.budget_spent() >= 1
                    if self.step % c.log_interval == 0 or finishing or stopping:
                        last = self._log_window(window, metrics_path, bar)
                        window = LossWindow()
                    bar.update(1)
                    if stopping:
                        self.save("last", with_state=True)
                        raise Stopped(self.step, self.stop_signal or "a signal to another process")
                    if self.step % c.eval_interval == 0 or finishing:
                        last = {**last, **self._evaluate_and_save(metrics_path, bar)}
                        window.restart()  # tokens/s counts training only
                        if c.patience and self.evals_since_best >= c.patience:
                            bar.write(f"step {self.step}: no lower val loss in {c.patience} evaluations; stopping")
                            break
                    elif c.checkpoint_interval and self.step % c.checkpoint_interval == 0:
                        self.save("last", with_state=True)
                    if finishing:
                        break
        finally:
            bar.close()
        return last

    def _log_window(self, window: "LossWindow", metrics_path, bar) -> dict:
        record = {"step": self.step, "train_loss": self.parallel.mean(window.mean()),
                  "lr": self.optimizer.param_groups[0]["lr"],
                  "tokens_per_s": window.tokens_per_s() * self.parallel.world_size}
        self._log(metrics_path, record)
        bar.note(loss=f"{record['train_loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
        return record

    def _evaluate_and_save(self, metrics_path, bar) -> dict:
        val = self.evaluate()
        scores = self.val_scores(self.forward) if self.val_scores else {}
        record = {"step": self.step, "val_loss": val, **scores}
        self._log(metrics_path, record)
        self.evals_since_best += 1
        if val < self.best_val:
            self.best_val, self.evals_since_best = val, 0
            self.save("best", with_state=False)
        self.save("last", with_state=True)
        if self.parallel.is_main:
            plot_metrics(metrics_path, self.run_dir / "loss.png")
            shown = "".join(f", {name} {value:.4f}" for name, value in scores.items())
            bar.write(f"step {self.step}: val loss {val:.4f} (best {self.best_val:.4f}){shown}")  # stderr, not stdout
        return record

    @contextlib.contextmanager
    def stop_on_signals(self):
        """While training: SIGINT/SIGTERM ask for a stop after the current step; a second SIGINT
        interrupts at once. Outside the main thread (where handlers cannot be set) nothing changes."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(number, frame):
            if self.stop_signal is not None and number == signal.SIGINT:
                raise KeyboardInterrupt
            self.stop_signal = signal.Signals(number).name

        previous = {number: signal.signal(number, request_stop) for number in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def _log(self, path, record):
        if self.parallel.is_main:
            with open(path, "a") as handle:
                handle.write(json.dumps(record) + "\n")


def load_teacher(path: str, student):
    """The teacher checkpoint at `path`, frozen: a causal LM with the student's vocabulary."""
    teacher, _ = load_checkpoint(resolve_checkpoint(path), with_tokenizer=False)
    kinds = {family_spec(m).kind for m in (teacher, student)}
    if kinds != {CAUSAL_LM}:
        raise UserError(f"train.teacher: distillation trains a causal LM from a causal LM (task lm); the teacher is "
                        f"a {teacher.config.family} model and the student a {student.config.family} model")
    if teacher.config.max_seq_len < student.config.max_seq_len:
        raise UserError(f"train.teacher: the teacher reads at most {teacher.config.max_seq_len} tokens, but the "
                        f"student trains on blocks of {student.config.max_seq_len}; lower model.max_seq_len")
    if teacher.config.vocab_size != student.config.vocab_size:
        raise UserError(f"train.teacher: the teacher's vocabulary has {teacher.config.vocab_size} tokens and the "
                        f"student's {student.config.vocab_size}; a student must use its teacher's tokenizer")
    return teacher.requires_grad_(False)


class Stopped(Exception):
    """Training stopped on a signal, after saving last/ at `step`."""

    def __init__(self, step: int, signal_name: str):
        super().__init__(f"stopped by {signal_name} at step {step}")
        self.step, self.signal_name = step, signal_name


class LossWindow:
    """The training loss over a logging interval, weighted by each step's tokens (one batch's loss
    swings with its lengths), and the training tokens per second since the last restart."""

    def __init__(self):
        self.weighted, self.tokens = 0.0, 0
        self.restart()

    def add(self, loss: float, tokens: int):
        self.weighted += loss * tokens
        self.tokens += tokens
        self.timed_tokens += tokens

    def mean(self) -> float:
        return self.weighted / max(self.tokens, 1)

    def restart(self):
        """Count tokens/s from now on, e.g. after an evaluation."""
        self.started, self.timed_tokens = time.perf_counter(), 0

    def tokens_per_s(self) -> float:
        return self.timed_tokens / max(time.perf_counter() - self.started, 1e-9)


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
