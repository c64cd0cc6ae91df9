"""A learnable transduction that needs real attention: numbers written as digits -> English
words ("40213" -> "forty thousand two hundred thirteen"). Every output word depends on a digit
at a position that moves with the number's length, so the decoder has to find it by
cross-attention.

Data is generated with a fixed seed; the held-out numbers never appear in training. Trains the
original Transformer (post-LN, sinusoidal positions, label smoothing 0.1, inverse-square-root
schedule) with `attnlab`'s seq2seq task and trainer, then reports exact match, BLEU and chrF on
the held-out set for greedy and beam-4 decoding, and the training time on this CPU.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/seq2seq_numbers_to_words.py
"""

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch

from attnlab.evaluation import text_metrics
from attnlab.inference import BeamSearch, Sampling
from attnlab.inference.seq2seq import translate
from attnlab.training import Trainer
from attnlab.training.tasks import resolve_run, setup_task

ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen " \
       "seventeen eighteen nineteen".split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def words(n: int) -> str:
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else "-" + ONES[n % 10])
    if n < 1000:
        return ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + words(n % 100))
    return words(n // 1000) + " thousand" + ("" if n % 1000 == 0 else " " + words(n % 1000))


def make_data(directory: Path, n_train: int, n_test: int, seed: int = 0):
    numbers = random.Random(seed).sample(range(1_000_000), n_train + n_test)
    for name, part in (("train", numbers[:n_train]), ("test", numbers[n_train:])):
        (directory / f"{name}.tsv").write_text("".join(f"{n}\t{words(n)}\n" for n in part))
    return directory / "train.tsv", directory / "test.tsv"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--train-pairs", type=int, default=20000)
    parser.add_argument("--test-pairs", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="numbers2words-"))
    train_path, test_path = make_data(work, args.train_pairs, args.test_pairs)
    run = resolve_run({
        "task": "seq2seq",
        "data": {"train": str(train_path), "val_fraction": 0.05},
        # digits in as characters, English out as BPE tokens (whole words, learned from the targets)
        "tokenizer": {"kind": "char", "shared": False, "target_kind": "bpe", "target_vocab_size": 300},
        "model": {"preset": "transformer-tiny", "d_model": 128, "n_head": 4, "ffn_hidden": 512,
                  "n_encoder_layer": 2, "n_decoder_layer": 2, "dropout": 0.0, "max_positions": 32},
        "train": {"max_steps": args.steps, "batch_size": 64, "lr": 2e-3, "warmup_steps": 200,
                  "schedule": "inverse_sqrt", "weight_decay": 0.0, "eval_interval": args.steps, "eval_batches": 5,
                  "progress": False},
    })
    model, tokenizers, batches = setup_task(run, work / "run", resume=False)
    trainer = Trainer(model, run.train, batches, work / "run", tokenizers)
    started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - started
    model.eval()
    pairs = [line.split("\t") for line in test_path.read_text().splitlines()]
    sources, references = [s for s, _ in pairs], [t for _, t in pairs]
    results = {"train_pairs": args.train_pairs, "held_out_pairs": len(pairs), "steps": args.steps,
               "parameters": model.num_parameters(), "train_seconds": round(train_seconds, 1),
               "final_val_loss": round(trainer.best_val, 4)}
    for name, decoding in (("greedy", Sampling(max_new_tokens=30, temperature=0)),
                           ("beam4", BeamSearch(num_beams=4, max_new_tokens=30))):
        started = time.perf_counter()
        hypotheses = [row[0][0] for row in translate(model, tokenizers, sources, decoding, batch_size=50)]
        metrics = text_metrics(hypotheses, references)
        results[name] = {"exact_match": round(metrics["exact_match"], 4), "bleu": round(metrics["bleu"], 2),
                         "chrf": round(metrics["chrf"], 2), "decode_seconds": round(time.perf_counter() - started, 1)}
        wrong = [(s, h, r) for s, h, r in zip(sources, hypotheses, references) if h != r][:3]
        results[name]["examples_wrong"] = wrong
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
