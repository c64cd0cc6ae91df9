"""Fine-tuning a pretrained encoder for sequence classification, with early stopping.

Unlike the step-based `Trainer` (language models sampled at random from one long stream),
classification runs over a labelled set in epochs, is judged by a metric (accuracy or macro
F1) on a validation set, keeps the best weights in memory and stops when the metric has not
improved for `patience` evaluations. `loss_fn(model, batch)` lets distillation reuse the loop.
"""

import copy
import dataclasses
import itertools
import math
import time

import torch

from ..config import Config
from ..errors import UserError
from ..evaluation.classification import classification_metrics
from ..progress import Progress
from .optim import lr_at, make_optimizer

METRICS = ("accuracy", "macro_f1")


@dataclasses.dataclass
class FinetuneConfig(Config):
    section = "finetune"
    # The defaults are the recipe measured on SST-2 from all-MiniLM-L6-v2 (benchmarks/RESULTS.md, issue 6):
    # one epoch, lr 1e-4, 64 tokens, evaluations every 200 steps with patience 3.
    epochs: int = 1
    max_steps: int = 0  # optimiser steps at most, the schedule fitted to them; 0: as many as the epochs take
    batch_size: int = 32
    lr: float = 1e-4
    warmup_fraction: float = 0.06
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    max_length: int = 64
    eval_every: int = 200  # optimiser steps between evaluations (and at the end); 0: once per epoch
    patience: int = 3  # evaluations without improvement before stopping; 0: never stop early
    metric: str = "accuracy"
    seed: int = 0

    def validate(self):
        self.require_positive("epochs", "batch_size", "max_length")
        if self.max_steps < 0:
            raise self.invalid("max_steps must be >= 0 (0: no cap)")
        if self.lr <= 0 or self.weight_decay < 0 or self.grad_clip < 0 or self.eval_every < 0 or self.patience < 0:
            raise self.invalid("lr must be > 0; weight_decay, grad_clip, eval_every and patience >= 0")
        self.require_fraction("warmup_fraction")
        self.require_choice("metric", METRICS)


@torch.no_grad()
def predict(model, data, batch_size=64, quiet=False) -> torch.Tensor:
    """Class probabilities (N, C) in the data's original order; the texts done show on stderr
    (attnlab.progress) unless `quiet`."""
    model.eval()
    probabilities = [None] * len(data)
    with Progress(len(data), "text", "classifying", quiet) as bar:
        for indices, batch in data.ordered_batches(batch_size):
            batch.pop("labels", None)
            probs = model(**batch).logits.float().softmax(dim=-1)
            for i, row in zip(indices, probs):
                probabilities[i] = row
            bar.update(len(indices))
    return torch.stack(probabilities)


def evaluate(model, data, names, batch_size=64) -> dict:
    predicted = predict(model, data, batch_size, quiet=True).argmax(dim=-1).tolist()
    return classification_metrics(predicted, data.label_ids, names)


def fit(model, train, val, names, config: FinetuneConfig, loss_fn=None, log=None) -> dict:
    """Train `model` in place on `train`, evaluating on `val`; ends holding the best weights. With
    a `log` (e.g. attnlab.progress.say) it reports each evaluation and shows its steps as they go.

    -> {"best": metrics at the best evaluation, "history": [...], "steps", "seconds"}."""
    loss_fn = loss_fn or (lambda m, batch: m(**batch).loss)
    optimizer = make_optimizer(model, config.lr, config.weight_decay, (0.9, 0.999))
    if not optimizer.param_groups[0]["params"] and not optimizer.param_groups[1]["params"]:
        raise UserError("the model has no trainable parameters")
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    warmup = int(config.warmup_fraction * total_steps)
    eval_every = config.eval_every or steps_per_epoch
    torch.manual_seed(config.seed)
    best, best_state, history, stale, step = None, None, [], 0, 0
    start = time.perf_counter()
    bar = Progress(total_steps, "step", "fine-tuning", quiet=log is None)
    log = log or (lambda message: None)
    epochs_of_batches = ((epoch, batch) for epoch in range(config.epochs)
                         for batch in train.shuffled_batches(config.batch_size, seed=config.seed + epoch))
    for epoch, batch in itertools.islice(epochs_of_batches, total_steps):
        loss = _train_step(model, optimizer, loss_fn, batch, lr_at(step, "cosine", config.lr, 0.0, warmup, total_steps),
                           config.grad_clip)
        step += 1
        bar.update()
        bar.note(loss=f"{loss:.4f}")
        if step % eval_every and step != total_steps:
            continue
        metrics = evaluate(model, val, names)
        history.append({"step": step, "epoch": epoch + 1, "train_loss": loss, "accuracy": metrics["accuracy"],
                        "macro_f1": metrics["macro_f1"], "seconds": time.perf_counter() - start})
        log(f"step {step}/{total_steps}: loss {loss:.4f}, val accuracy {metrics['accuracy']:.4f}, "
            f"macro F1 {metrics['macro_f1']:.4f}")
        if best is None or metrics[config.metric] > best[config.metric]:
            best, best_state, stale = metrics, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
        if config.patience and stale >= config.patience:
            log(f"early stop: no {config.metric} gain in {stale} evaluations")
            break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    return {"best": best, "history": history, "steps": step, "seconds": time.perf_counter() - start}


def _train_step(model, optimizer, loss_fn, batch, lr, grad_clip) -> float:
    model.train()
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = loss_fn(model, batch)
    loss = getattr(loss, "total", loss)  # a DistillLoss carries its parts
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()
