"""Multi30k German -> English with the original Transformer (issue 24): prepare the shared data,
train with configs/multi30k.yaml, then score the run with sacrebleu.

    python benchmarks/multi30k.py prepare --out data/multi30k
    OMP_NUM_THREADS=2 attnlab train --config configs/multi30k.yaml --threads 2 --out runs/multi30k
    OMP_NUM_THREADS=1 python benchmarks/multi30k.py penalties runs/multi30k/last --data data/multi30k
    OMP_NUM_THREADS=1 python benchmarks/multi30k.py curve COPIES_OF_LAST... --data data/multi30k

`prepare` writes train.tsv (28,000 pairs), dev.tsv (1,000 pairs held out of the shared train set
by a seeded shuffle) and val.tsv (the shared validation set, 1,014 pairs). The run validates on
dev.tsv and the length penalty is chosen on it; val.tsv is what the result is reported on, scored
once at the chosen penalty (the other penalties' val scores are printed beside it, not chosen from).
`curve` scores copies of the run's last/ taken while it trains (greedy, on val): BLEU against
training time.
BLEU is sacrebleu's corpus BLEU on detokenised, cased text (13a tokenisation).
"""

import argparse
import gzip
import json
import os
import random
import re
import sys
import time
from pathlib import Path

import torch

from attnlab.checkpoint import load_checkpoint, load_trainer_state
from attnlab.data.seq2seq import read_pairs
from attnlab.inference.beam import BeamSearch
from attnlab.inference.generate import Sampling
from attnlab.inference.seq2seq import translate

SHARED = Path(os.environ.get("ATTNLAB_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "multi30k"
DEV_PAIRS = 1000


def prepare(out: Path):
    """The shared .gz files -> train.tsv, dev.tsv and val.tsv in `out` (a tab inside a sentence, with
    the spaces before it, becomes one space: one German training sentence holds one)."""
    out.mkdir(parents=True, exist_ok=True)
    pairs = {split: list(zip(read_lines(f"{split}.de"), read_lines(f"{split}.en"), strict=True))
             for split in ("train", "val")}
    order = list(range(len(pairs["train"])))
    random.Random(0).shuffle(order)
    dev = set(order[:DEV_PAIRS])
    splits = {"train": [p for i, p in enumerate(pairs["train"]) if i not in dev],
              "dev": [p for i, p in enumerate(pairs["train"]) if i in dev], "val": pairs["val"]}
    for name, rows in splits.items():
        (out / f"{name}.tsv").write_text("".join(f"{source}\t{target}\n" for source, target in rows), encoding="utf-8")
        print(f"{out / name}.tsv: {len(rows)} pairs", file=sys.stderr)


def read_lines(name: str) -> list:
    if not (SHARED / f"{name}.gz").is_file():
        sys.exit(f"{SHARED / name}.gz is missing: point ATTNLAB_DATA at the shared data folder")
    with gzip.open(SHARED / f"{name}.gz", "rt", encoding="utf-8") as handle:
        return [re.sub(r"\s*\t", " ", line.strip()) for line in handle.read().splitlines()]


def bleu(model, tokenizers, pairs, decoding) -> dict:
    import sacrebleu

    start = time.perf_counter()
    hypotheses = [outputs[0][0] for outputs in translate(model, tokenizers, [s for s, _ in pairs], decoding)]
    score = sacrebleu.corpus_bleu(hypotheses, [[t for _, t in pairs]])
    return {"bleu": round(score.score, 2), "brevity_penalty": round(score.bp, 3),
            "length_ratio": round(score.sys_len / score.ref_len, 3), "seconds": round(time.perf_counter() - start, 1)}


def greedy(args) -> Sampling:
    return Sampling(max_new_tokens=args.max_new_tokens, temperature=0.0)


def load_pairs(path: Path) -> list:
    return [(source, target) for _, source, target in read_pairs(path)]


def penalties(args):
    model, tokenizers = load_checkpoint(args.checkpoint)
    dev, val = load_pairs(args.data / "dev.tsv"), load_pairs(args.data / "val.tsv")
    rows = []
    for penalty in args.penalties:
        beam = BeamSearch(num_beams=args.beams, max_new_tokens=args.max_new_tokens, length_penalty=penalty)
        rows.append({"length_penalty": penalty, "dev": bleu(model, tokenizers, dev, beam),
                     "val": bleu(model, tokenizers, val, beam)})
        print(json.dumps(rows[-1]), file=sys.stderr)
    chosen = max(rows, key=lambda row: row["dev"]["bleu"])
    report = {"checkpoint": str(args.checkpoint), "beams": args.beams, "rows": rows,
              "greedy": {"dev": bleu(model, tokenizers, dev, greedy(args)), "val": bleu(model, tokenizers, val, greedy(args))},
              "chosen_on_dev": chosen["length_penalty"], "val_bleu_at_chosen": chosen["val"]["bleu"]}
    print(json.dumps(report, indent=1))


def curve(args):
    """Greedy val BLEU of each checkpoint, with the training step and seconds it was saved at."""
    val = load_pairs(args.data / "val.tsv")
    states = {checkpoint: load_trainer_state(checkpoint) for checkpoint in args.checkpoints}
    for checkpoint, state in sorted(states.items(), key=lambda item: item[1]["step"]):
        model, tokenizers = load_checkpoint(checkpoint)
        scores = bleu(model, tokenizers, val, greedy(args))
        print(json.dumps({"checkpoint": str(checkpoint), "step": state["step"],
                          "train_minutes": round(state["seconds"] / 60, 1), "val_greedy": scores}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    scoring = argparse.ArgumentParser(add_help=False)
    scoring.add_argument("--data", type=Path, required=True, help="the folder `prepare` wrote")
    scoring.add_argument("--max-new-tokens", type=int, default=80)
    p = sub.add_parser("prepare", help="write train.tsv, dev.tsv and val.tsv")
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("penalties", parents=[scoring], help="beam-search BLEU on dev and val at several length penalties")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--penalties", type=lambda text: [float(x) for x in text.split(",")], default=[0.6, 1.0, 1.4, 2.0])
    p.add_argument("--beams", type=int, default=5)
    p = sub.add_parser("curve", parents=[scoring], help="greedy val BLEU of checkpoints saved during a run")
    p.add_argument("checkpoints", type=Path, nargs="+")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.command == "prepare":
        prepare(args.out)
    elif args.command == "penalties":
        penalties(args)
    else:
        curve(args)


if __name__ == "__main__":
    main()
