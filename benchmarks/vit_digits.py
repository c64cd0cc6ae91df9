"""A ViT on scikit-learn's 8 x 8 digits with the split of sklearn's own example ("Recognizing
hand-written digits": the first half of load_digits to train, the second half to test, where
SVC(gamma=0.001) scores 96.9 %), trained and evaluated through the attnlab command line.

    tune    the first half split again, stratified: 85 % to train, 15 % to validate; the recipe
            (config below) was chosen on this validation split alone
    final   the same recipe trained on the whole first half, then one evaluation on the second half

    pip install scikit-learn   # for load_digits and the SVM
    OMP_NUM_THREADS=1 flock /tmp/attnlab-bench.lock python benchmarks/vit_digits.py final --out runs/digits
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from attnlab.cli import main as attnlab
from attnlab.data.media import LabelledMedia, stratified_split

RECIPE = ["--preset", "vit-digits", "tokenizer.shift=1", "tokenizer.rotate=12", "tokenizer.scale=0.1",
          "data.augment=true", "train.max_steps=3000", "train.batch_size=64", "train.lr=2e-3", "train.min_lr=1e-5",
          "train.warmup_steps=200", "train.weight_decay=0.05", "train.eval_interval=500", "train.eval_batches=4",
          "train.progress=false", "train.device=cpu"]


def halves():
    """sklearn's example split: images as floats in 0..1 (N, 8, 8), labels (N,)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = (digits.images / 16).astype(np.float32), digits.target
    half = len(x) // 2  # train_test_split(test_size=0.5, shuffle=False) gives the first 898 to train
    return (x[:half], y[:half]), (x[half:], y[half:])


def svm_accuracy(train, test) -> float:
    from sklearn import svm

    def flat(x):  # sklearn's example fits the raw 0..16 values
        return 16 * x.reshape(len(x), -1)

    classifier = svm.SVC(gamma=0.001).fit(flat(train[0]), train[1])
    return float((classifier.predict(flat(test[0])) == test[1]).mean())


def save(path: Path, x, y) -> Path:
    np.savez(path, x=x, y=y)
    return path


def run(args, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    train, test = halves()
    whole = LabelledMedia(list(train[0]), train[1], [str(i) for i in range(10)])
    part, val = stratified_split(whole, 0.15, seed=0)
    val_path = save(out / "val.npz", np.stack(val.items), val.labels)
    train_path = save(out / "train.npz", *(train if args.stage == "final" else (np.stack(part.items), part.labels)))
    start = time.perf_counter()
    code = attnlab(["train", "--data", str(train_path), "--out", str(out / "run"), f"data.val_path={val_path}",
                    *RECIPE, *args.overrides])
    seconds = time.perf_counter() - start
    if code:
        sys.exit(code)
    last = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()][-1]
    report = {"stage": args.stage, "train_examples": int(len(np.load(train_path)["y"])),
              "train_seconds": round(seconds), "val_accuracy_last": last.get("val_accuracy")}
    if args.stage == "final":  # the test half, once: eval prints its accuracy, macro F1 and confusion matrix
        test_path = save(out / "test.npz", *test)
        if attnlab(["eval", str(out / "run" / "last"), "--data", str(test_path), "--plot",
                    str(out / "test_confusion.png")]):
            sys.exit(2)
        report["svm_test_accuracy"] = svm_accuracy(train, test)
    print(json.dumps(report), file=sys.stderr)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("stage", choices=("tune", "final"))
    parser.add_argument("overrides", nargs="*", help="extra section.key=value settings for the run")
    parser.add_argument("--out", default="runs/vit-digits")
    args = parser.parse_args()
    torch.set_num_threads(1)
    run(args, Path(args.out))


if __name__ == "__main__":
    main()
