"""AST from scratch on the Free Spoken Digit Dataset through the command line, on two splits.

FSDD's files are flat, `{digit}_{speaker}_{index}.wav`; this script lays out class folders of
symlinks (root/<digit>/<file>), which is how `attnlab train` reads labelled audio, for
- speakers: train on george, jackson, nicolas, yweweler; validate on lucas (checkpoint choice and
  all tuning); test on theo, whom no run looked at before the reported one;
- random: every clip, 80 / 10 / 10 % per digit (seed 0) for train / val / test.
Then, per split, the same commands a user runs, timed:

    attnlab train --config configs/ast_fsdd.yaml --data SPLIT/train --out RUN data.val_path=SPLIT/val
    attnlab eval RUN --data SPLIT/test

    OMP_NUM_THREADS=1 flock /tmp/attnlab-bench.lock python benchmarks/fsdd_ast.py --out runs/fsdd-ast
"""

import argparse
import contextlib
import io
import json
import random
import time
from collections import defaultdict
from pathlib import Path

import torch

from attnlab.cli import main as attnlab

FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd" / "train"
VAL_SPEAKER, TEST_SPEAKER = "lucas", "theo"


def speaker_split(files: list) -> dict:
    split = {"train": [], "val": [], "test": []}
    for f in files:
        speaker = f.name.split("_")[1]
        split["val" if speaker == VAL_SPEAKER else "test" if speaker == TEST_SPEAKER else "train"].append(f)
    return split


def random_split(files: list, seed: int = 0) -> dict:
    by_digit = defaultdict(list)
    for f in files:
        by_digit[f.name.split("_")[0]].append(f)
    split = {"train": [], "val": [], "test": []}
    rng = random.Random(seed)
    for members in by_digit.values():
        rng.shuffle(members)
        tenth = len(members) // 10
        split["test"] += members[:tenth]
        split["val"] += members[tenth:2 * tenth]
        split["train"] += members[2 * tenth:]
    return split


def lay_out(split: dict, root: Path) -> Path:
    """root/<part>/<digit>/<file> symlinks to the recordings."""
    for part, files in split.items():
        for f in files:
            link = root / part / f.name.split("_")[0] / f.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(f)
    return root


def run(name: str, root: Path, out: Path, config: str, overrides: list) -> dict:
    run_dir = out / f"run-{name}"
    start = time.perf_counter()
    assert attnlab(["train", "--config", config, "--data", str(root / "train"), "--out", str(run_dir),
                    f"data.val_path={root / 'val'}", *overrides]) == 0
    train_s = time.perf_counter() - start
    scores = {}
    for part in ("val", "test"):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert attnlab(["eval", str(run_dir), "--data", str(root / part)]) == 0
        scores[part] = json.loads(printed.getvalue())
    return {"split": name, "train_wall_s": round(train_s, 1), "train_clips": len(list((root / "train").rglob("*.wav"))),
            "val_accuracy": scores["val"]["accuracy"], "test_accuracy": scores["test"]["accuracy"],
            "test_macro_f1": scores["test"].get("macro_f1")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/fsdd-ast")
    parser.add_argument("--config", default="configs/ast_fsdd.yaml")
    parser.add_argument("--splits", default="speakers,random")
    parser.add_argument("overrides", nargs="*", help="section.key=value for both runs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=False)
    files = sorted(FSDD.glob("*.wav"))
    makers = {"speakers": speaker_split, "random": random_split}
    for name in args.splits.split(","):
        record = run(name, lay_out(makers[name](files), out / name), out, args.config, args.overrides)
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
