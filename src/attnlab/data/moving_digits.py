"""Moving digits: real MNIST digits sliding across a canvas; the label is the direction of motion.

Each clip shows one digit (shrunk to digit_size pixels) at a uniformly random place on a
canvas x canvas torus (what leaves one edge comes back at the other), moving `speed` pixels a frame
in one of 8 directions (4 with directions=4). Because the canvas wraps, every frame shows the digit
at a uniformly random place whatever the direction, and the digit's class is independent of it:
no single frame tells the direction; only motion across frames does. A per-frame model should stay
at chance (1 / directions).

Splits draw digits from disjoint ranges of the MNIST file (train 0-5999, validation 6000-6999,
test 7000-7999 by default), so no digit image is in two splits.

    python -m attnlab.data.moving_digits --mnist ../shared/data/mnist/mnist_t10k_first8000.npz --out data/moving
writes train.npz, val.npz and test.npz, each with x (N, T, H, W) uint8, y (N,) and label_names (the directions).
"""

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError

# (dy, dx) unit steps, image rows growing downwards
DIRECTIONS = {"right": (0, 1), "down-right": (1, 1), "down": (1, 0), "down-left": (1, -1), "left": (0, -1),
              "up-left": (-1, -1), "up": (-1, 0), "up-right": (-1, 1)}
SPLITS = {"train": (0, 6000), "val": (6000, 7000), "test": (7000, 8000)}


def direction_names(directions: int = 8) -> list:
    if directions not in (4, 8):
        raise UserError(f"moving digits: directions must be 4 or 8, got {directions}")
    return list(DIRECTIONS)[::8 // directions]


def shrink(digits: np.ndarray, size: int) -> np.ndarray:
    """(N, 28, 28) uint8 -> (N, size, size) uint8, area-averaged."""
    x = torch.from_numpy(digits).float().unsqueeze(1)
    return F.interpolate(x, size=(size, size), mode="area").squeeze(1).round().clamp(0, 255).byte().numpy()


def moving_digits(digits: np.ndarray, count: int, frames: int = 8, canvas: int = 32, speed: int = 2,
                  directions: int = 8, seed: int = 0) -> tuple:
    """`count` clips of digits drawn from `digits` (N, s, s) uint8 -> (x (count, frames, canvas, canvas)
    uint8, y (count,) direction indices into direction_names(directions))."""
    names = direction_names(directions)
    if not 8 <= frames <= 64 or digits.shape[-1] > canvas:
        raise UserError(f"moving digits: frames must be 8..64 and digits no larger than the {canvas}-pixel canvas")
    rng = np.random.default_rng(seed)
    steps = np.array([DIRECTIONS[name] for name in names]) * speed  # (directions, 2)
    x = np.zeros((count, frames, canvas, canvas), dtype=np.uint8)
    y = rng.integers(len(names), size=count)
    which = rng.integers(len(digits), size=count)
    starts = rng.integers(canvas, size=(count, 2))
    size = digits.shape[-1]
    for i in range(count):
        first = np.zeros((canvas, canvas), dtype=np.uint8)
        first[:size, :size] = digits[which[i]]
        first = np.roll(first, tuple(starts[i]), axis=(0, 1))
        for t in range(frames):
            x[i, t] = np.roll(first, tuple(t * steps[y[i]]), axis=(0, 1))
    return x, y


def write_splits(mnist: Path, out: Path, counts: dict, digit_size: int = 16, seed: int = 0, **clip) -> dict:
    """One .npz per split (x, y, label_names) from the MNIST file's disjoint index ranges; -> split -> path."""
    try:
        with np.load(mnist, allow_pickle=False) as data:
            images = data["images"]
    except (OSError, KeyError, ValueError) as err:
        raise UserError(f"{mnist} is not the MNIST .npz with `images` ({err})") from None
    names = np.array(direction_names(clip.get("directions", 8)))
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for offset, (split, count) in enumerate(counts.items()):
        low, high = SPLITS[split]
        x, y = moving_digits(shrink(images[low:high], digit_size), count, seed=seed + offset, **clip)
        paths[split] = out / f"{split}.npz"
        np.savez_compressed(paths[split], x=x, y=y, label_names=names)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist", type=Path, required=True, help="mnist_t10k_first8000.npz")
    parser.add_argument("--out", type=Path, required=True, help="directory for train.npz, val.npz, test.npz")
    parser.add_argument("--train", type=int, default=8000, help="training clips")
    parser.add_argument("--val", type=int, default=1000, help="validation clips")
    parser.add_argument("--test", type=int, default=1000, help="test clips")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--canvas", type=int, default=32)
    parser.add_argument("--digit-size", type=int, default=16)
    parser.add_argument("--speed", type=int, default=2, help="pixels a frame")
    parser.add_argument("--directions", type=int, default=8, choices=(4, 8))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = write_splits(args.mnist, args.out, {"train": args.train, "val": args.val, "test": args.test},
                         digit_size=args.digit_size, seed=args.seed, frames=args.frames, canvas=args.canvas,
                         speed=args.speed, directions=args.directions)
    for split, path in paths.items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
