"""Selective copying (Gu & Dao 2023, section 4.1.1): why "selective" matters.

    flock /tmp/attnlab-bench.lock env OMP_NUM_THREADS=1 PYTHONPATH=src \
        python benchmarks/mamba_selective_copying.py [--steps 1500]

A sequence of --length noise tokens holds --tokens data tokens at random positions; then come
--tokens copy markers, at which the model must output the data tokens in order. Only the
answers are scored. Two models of the same shape train on the same batches: Mamba (delta, B, C
computed from the input) and the ablation with input-independent delta, B, C
(`selective=false`, a linear time-invariant SSM with the same conv and gate). Accuracy is per
answer token on --validation fixed sequences (a different seed from training).
"""

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

from attnlab.models import build_model
from attnlab.models.mamba import MambaConfig
from common import machine

NOISE, MARKER, FIRST_DATA = 0, 1, 2


def batch(rows: int, length: int, tokens: int, vocab: int, generator: torch.Generator):
    """-> input ids (B, length + tokens), targets (B, length + tokens) with -100 except at the answers."""
    data = torch.randint(FIRST_DATA, vocab, (rows, tokens), generator=generator)
    places = torch.rand(rows, length, generator=generator).argsort(dim=1)[:, :tokens].sort(dim=1).values
    ids = torch.full((rows, length + tokens), NOISE)
    ids.scatter_(1, places, data)
    ids[:, length:] = MARKER
    targets = torch.full_like(ids, -100)
    targets[:, length - 1:-1] = data  # the marker before each answer's position predicts it
    return ids, targets


@torch.no_grad()
def accuracy(model, ids, targets) -> float:
    model.eval()
    hits, total = 0, 0
    for start in range(0, len(ids), 128):
        logits = model(ids[start:start + 128]).logits
        scored = targets[start:start + 128] != -100
        hits += (logits.argmax(-1)[scored] == targets[start:start + 128][scored]).sum().item()
        total += scored.sum().item()
    model.train()
    return hits / total


def train(config: MambaConfig, args, validation) -> dict:
    torch.manual_seed(args.seed)
    model = build_model(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(args.seed)
    curve, start = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        warm = min(1.0, step / max(1, args.steps // 10))
        for group in optimizer.param_groups:
            group["lr"] = args.lr * warm * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        ids, targets = batch(args.batch, args.length, args.tokens, args.vocab, generator)
        loss = F.cross_entropy(model(ids).logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % args.eval_every == 0 or step == args.steps:
            curve.append((step, round(loss.item(), 4), round(accuracy(model, *validation), 4)))
            print(json.dumps({"selective": config.selective, "step": step, "loss": curve[-1][1],
                              "val_accuracy": curve[-1][2], "seconds": round(time.perf_counter() - start)}),
                  flush=True)
    return {"parameters": model.num_parameters(), "curve": curve, "seconds": time.perf_counter() - start}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=18, help="noise, marker and vocab - 2 data tokens")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--validation", type=int, default=512, help="validation sequences")
    parser.add_argument("--only", choices=["selective", "ablation"], help="run one of the two models")
    args = parser.parse_args()
    torch.set_num_threads(1)
    validation = batch(args.validation, args.length, args.tokens, args.vocab, torch.Generator().manual_seed(10_000 + args.seed))
    print(machine(), json.dumps(vars(args)), flush=True)
    results = {}
    for selective in (True, False):
        if args.only and args.only != ("selective" if selective else "ablation"):
            continue
        config = MambaConfig(vocab_size=args.vocab, max_seq_len=args.length + args.tokens, n_layer=args.n_layer,
                             d_model=args.d_model, d_state=args.d_state, selective=selective)
        results["Mamba (selective)" if selective else "ablation (input-independent delta, B, C)"] = \
            train(config, args, validation)
    print("| model | parameters | val accuracy at " + " / ".join(str(s) for s, *_ in next(iter(
        results.values()))["curve"]) + " | time |\n|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['parameters']:,} | " + " / ".join(f"{a:.1%}" for *_, a in r["curve"])
              + f" | {r['seconds'] / 60:.1f} min |")


if __name__ == "__main__":
    main()
