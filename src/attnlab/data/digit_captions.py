"""Digit captions: image-caption pairs from real MNIST digits, for contrastive (CLIP) training.

Two sets, each split into train / val / test drawn from disjoint ranges of the MNIST file (train
0-5999, validation 6000-6999, test 7000-7999), so no digit image is in two splits:

    single   one 28 x 28 digit, captioned from a template: "a handwritten 7", "the number seven", ...
    pairs    two digits side by side on a 56 x 56 canvas: "a 3 to the left of a 7", ...

Zero-shot means never seen in training, and two things are held out of every train split entirely:
some caption TEMPLATES (val and test captions use all templates, each line says which it used), and,
in the pairs set, some digit PAIRS (both orders of each: {3, 7} out means neither "3 left of 7"
nor "7 left of 3" is ever trained on). Val and test draw half their pairs from the held-out ones.
Everything is deterministic from the seed.

    python -m attnlab.data.digit_captions --mnist ../shared/data/mnist/mnist_t10k_first8000.npz --out data/captions

writes OUT/<set>/<split>/pairs.jsonl (one {"image", "text", "digits", "template"} a line, the image
a PNG path relative to that folder: what `attnlab train task=contrastive --data` reads; a pair of two
different digits adds "hard_negative", its caption with the digits swapped) with the images in
OUT/<set>/<split>/images/, and OUT/manifest.json (seed, templates, held-out pairs, counts).
"""

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError
from .moving_digits import SPLITS

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# fields: {digit} / {word} for one digit; {left}, {right}, {left_word}, {right_word} for a pair
TEMPLATES = {
    "single": {
        "train": ("a handwritten {digit}", "the number {word}", "a photo of the digit {digit}", "an image of a {word}",
                  "the digit {digit}", "a {digit} written by hand", "a scan of the number {digit}",
                  "a handwritten {word}"),
        "held_out": ("a drawing of the numeral {digit}", "a picture of a {word}", "someone wrote a {digit}"),
    },
    "pairs": {
        "train": ("a {left} to the left of a {right}", "a {right} to the right of a {left}",
                  "{left} and then {right}", "the number {left_word} followed by {right_word}",
                  "two digits: {left} on the left, {right} on the right"),
        "held_out": ("a {left_word} on the left and a {right_word} on the right", "{left} beside {right}, in that order"),
    },
}
SIZE = 28  # an MNIST digit's side, pixels
# Training pair captions use the first template ("a {left} to the left of a {right}") this often, else
# one at random. With every template equally likely, CLIP from scratch never learns which digit is
# left (recall@1 ~50 %: it matches the two digits, and the order is a coin toss; benchmarks/RESULTS.md,
# issue 18); one dominant phrasing lets both towers pick the order up first.
MAIN_SHARE = 0.5


def caption(template: str, digits: tuple) -> str:
    """`template` filled with one digit (digit, word) or a pair (left, right and their words)."""
    if len(digits) == 1:
        return template.format(digit=digits[0], word=WORDS[digits[0]])
    left, right = digits
    return template.format(left=left, right=right, left_word=WORDS[left], right_word=WORDS[right])


def held_out_pairs(count: int, seed: int) -> list:
    """`count` unordered pairs (a, b), a < b, drawn by `seed` from the 45 pairs of distinct digits."""
    if not 0 <= count <= 40:
        raise UserError(f"digit captions: held-out pairs must be 0..40 (of 45), got {count}")
    candidates = [(a, b) for a in range(10) for b in range(a + 1, 10)]
    chosen = np.random.default_rng([seed, 1]).choice(len(candidates), count, replace=False)
    return sorted(candidates[i] for i in chosen)


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Two (28, 28) digits -> one (56, 56) canvas, left and right halves, rows centred."""
    canvas = np.zeros((2 * SIZE, 2 * SIZE), dtype=np.uint8)
    top = SIZE // 2
    canvas[top:top + SIZE, :SIZE] = left
    canvas[top:top + SIZE, SIZE:] = right
    return canvas


def draw_pairs(labels: np.ndarray, count: int, allowed: list, rng: np.random.Generator) -> np.ndarray:
    """(count, 2) indices into `labels`: image pairs whose (left, right) digits are drawn uniformly
    from the ordered pairs `allowed`, each image at random among that digit's."""
    by_digit = [np.flatnonzero(labels == d) for d in range(10)]
    which = rng.integers(len(allowed), size=count)
    return np.array([[rng.choice(by_digit[d]) for d in allowed[w]] for w in which])


def split_templates(kind: str, split: str) -> tuple:
    """The templates a split's captions use: the train ones in train, all of them elsewhere."""
    templates = TEMPLATES[kind]
    return templates["train"] if split == "train" else templates["train"] + templates["held_out"]


def write_split(folder: Path, images: list, digits: list, templates: tuple, rng: np.random.Generator,
                main_share: float = 0.0) -> Path:
    """PNGs in folder/images and folder/pairs.jsonl, one caption a line: the first template with
    probability `main_share`, else a template at random (the first among them)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (image, shown) in enumerate(zip(images, digits)):
        # no extra draw when main_share is 0: the other splits' captions stay as earlier builds wrote them
        template = templates[0 if main_share and rng.random() < main_share else rng.integers(len(templates))]
        name = f"images/{i:05d}.png"
        Image.fromarray(image).save(folder / name)
        line = {"image": name, "text": caption(template, shown), "digits": list(shown), "template": template}
        if len(shown) == 2 and shown[0] != shown[1]:  # the digits the other way round: only the order tells
            line["hard_negative"] = caption(template, shown[::-1])
        lines.append(json.dumps(line))
    path = folder / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def build(mnist: Path, out: Path, pair_counts: dict, held_out: int = 8, seed: int = 0,
          main_share: float = MAIN_SHARE) -> dict:
    """Both sets under `out` (see the module's docstring); -> the manifest written to out/manifest.json."""
    try:
        with np.load(mnist, allow_pickle=False) as data:
            images, labels = data["images"], data["labels"]
    except (OSError, KeyError, ValueError) as err:
        raise UserError(f"{mnist} is not the MNIST .npz with `images` and `labels` ({err})") from None
    if (out / "manifest.json").exists():
        raise UserError(f"{out} already holds a digit-caption build; choose another --out")
    hidden = held_out_pairs(held_out, seed)
    hidden_ordered = [p for a, b in hidden for p in ((a, b), (b, a))]
    seen = [(a, b) for a in range(10) for b in range(10) if (min(a, b), max(a, b)) not in hidden]
    if not 0 <= main_share <= 1:
        raise UserError(f"digit captions: the main template's share must be in [0, 1], got {main_share}")
    manifest = {"seed": seed, "source": str(mnist), "splits": SPLITS, "templates": TEMPLATES,
                "held_out_pairs": hidden, "main_share": main_share, "counts": {}}
    for offset, (split, (low, high)) in enumerate(SPLITS.items()):
        rng = np.random.default_rng([seed, 2, offset])
        part, part_labels = images[low:high], labels[low:high]
        write_split(out / "single" / split, list(part), [(int(d),) for d in part_labels],
                    split_templates("single", split), rng)
        count = pair_counts[split]
        if split == "train":
            chosen = draw_pairs(part_labels, count, seen, rng)
        else:  # half the pairs held out, half seen in training (with new images)
            chosen = np.concatenate([draw_pairs(part_labels, count // 2, hidden_ordered, rng),
                                     draw_pairs(part_labels, count - count // 2, seen, rng)])
        write_split(out / "pairs" / split, [side_by_side(part[i], part[j]) for i, j in chosen],
                    [(int(part_labels[i]), int(part_labels[j])) for i, j in chosen],
                    split_templates("pairs", split), rng, main_share if split == "train" else 0.0)
        manifest["counts"][split] = {"single": high - low, "pairs": count}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist", type=Path, required=True, help="mnist_t10k_first8000.npz")
    parser.add_argument("--out", type=Path, required=True, help="a new directory for the two sets")
    parser.add_argument("--train-pairs", type=int, default=20000, help="two-digit training images")
    parser.add_argument("--val-pairs", type=int, default=2000)
    parser.add_argument("--test-pairs", type=int, default=2000)
    parser.add_argument("--held-out", type=int, default=8, help="unordered digit pairs kept out of training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--main-share", type=float, default=MAIN_SHARE,
                        help="how often a training pair caption uses the first template (else one at random)")
    args = parser.parse_args(argv)
    counts = {"train": args.train_pairs, "val": args.val_pairs, "test": args.test_pairs}
    try:
        manifest = build(args.mnist, args.out, counts, held_out=args.held_out, seed=args.seed,
                         main_share=args.main_share)
    except UserError as err:
        parser.exit(2, f"error: {err}\n")
    print(f"held-out pairs {manifest['held_out_pairs']}; {args.out}/{{single,pairs}}/{{train,val,test}}/pairs.jsonl")


if __name__ == "__main__":
    main()
