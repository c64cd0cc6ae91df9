"""A ViT on scikit-learn's 8 x 8 digits with the split of sklearn's own example ("Recognizing
hand-written digits": the first half of load_digits to train, the second half to test, where
SVC(gamma=0.001) scores 96.9 %), trained and evaluated through the attnlab command line.

    tune    5-fold cross-validation on the first half (stratified folds): each fold's run trains on
            the other four and reports its last validation accuracy; the recipe (RECIPE below) was
            chosen on these folds alone. --folds picks some, to spread them over processes
    final   the same recipe trained on the whole first half, then one evaluation on the second half

    pip install scikit-learn   # for load_digits and the SVM
    OMP_NUM_THREADS=1 python benchmarks/vit_digits.py tune --out runs/digits-cv --folds 0,1,2 [train.max_steps=3000]
    OMP_NUM_THREADS=1 python benchmarks/vit_digits.py final --out runs/digits
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

FOLDS = 5

RECIPE = ["--preset", "vit-digits", "tokenizer.shift=1", "tokenizer.rotate=12", "tokenizer.scale=0.1",
          "data.augment=true", "train.max_steps=8000", "train.batch_size=64", "train.lr=2e-3", "train.min_lr=1e-5",
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


def fold_indices(labels: np.ndarray, seed: int = 0) -> list:
    """FOLDS disjoint index arrays covering `labels`, each about a FOLDS-th of every class."""
    rng = np.random.default_rng(seed)
    parts = [np.array_split(rng.permutation(np.flatnonzero(labels == label)), FOLDS) for label in np.unique(labels)]
    return [np.sort(np.concatenate([by_class[k] for by_class in parts])) for k in range(FOLDS)]


def train_run(out: Path, train: tuple, val: tuple, overrides: list) -> dict:
    """attnlab train on (x, y) `train`, validating on `val`, in out/run -> its seconds and last val accuracy."""
    out.mkdir(parents=True, exist_ok=True)
    train_path, val_path = save(out / "train.npz", *train), save(out / "val.npz", *val)
    start = time.perf_counter()
    code = attnlab(["train", "--data", str(train_path), "--out", str(out / "run"), f"data.val_path={val_path}",
                    *RECIPE, *overrides])
    if code:
        sys.exit(code)
    last = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()][-1]
    return {"train_examples": len(train[1]), "train_seconds": round(time.perf_counter() - start),
            "val_accuracy_last": last.get("val_accuracy")}


def tune(args, out: Path):
    (x, y), _ = halves()
    folds = fold_indices(y)
    for k in map(int, args.folds.split(",")):
        rest = np.setdiff1d(np.arange(len(y)), folds[k])
        report = train_run(out / f"fold{k}", (x[rest], y[rest]), (x[folds[k]], y[folds[k]]), args.overrides)
        print(json.dumps({"stage": "tune", "fold": k, **report}), file=sys.stderr)


def final(args, out: Path):
    train, test = halves()
    whole = LabelledMedia(list(train[0]), train[1], [str(i) for i in range(10)])
    _, val = stratified_split(whole, 0.15, seed=0)  # logged during training only: these images are trained on
    report = train_run(out, train, (np.stack(val.items), val.labels), args.overrides)
    test_path = save(out / "test.npz", *test)  # the test half, once: eval prints accuracy, macro F1, confusion
    if attnlab(["eval", str(out / "run" / "last"), "--data", str(test_path), "--plot", str(out / "test_confusion.png")]):
        sys.exit(2)
    print(json.dumps({"stage": "final", **report, "svm_test_accuracy": svm_accuracy(train, test)}), file=sys.stderr)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("stage", choices=("tune", "final"))
    parser.add_argument("overrides", nargs="*", help="extra section.key=value settings for the run")
    parser.add_argument("--out", default="runs/vit-digits")
    parser.add_argument("--folds", default=",".join(map(str, range(FOLDS))), help="tune: which folds to run")
    args = parser.parse_intermixed_args()
    torch.set_num_threads(1)
    (tune if args.stage == "tune" else final)(args, Path(args.out))


if __name__ == "__main__":
    main()
