"""Moving digits: the label is the direction of motion, and no single frame gives it away."""

import numpy as np
import pytest
import torch

from attnlab.data.moving_digits import DIRECTIONS, direction_names, moving_digits, shrink, write_splits
from attnlab.errors import UserError


@pytest.fixture
def digits(data_dir):
    with np.load(data_dir / "mnist" / "mnist_t10k_first8000.npz") as data:
        return shrink(data["images"][:500], 16)


def test_each_frame_is_the_last_moved_one_step_in_the_labelled_direction(digits):
    x, y = moving_digits(digits, 50, frames=10, canvas=32, speed=2)
    assert x.shape == (50, 10, 32, 32) and x.dtype == np.uint8 and set(y) <= set(range(8))
    names = direction_names(8)
    for clip, label in zip(x, y):
        dy, dx = DIRECTIONS[names[label]]
        assert clip[0].sum() > 0
        for t in range(1, 10):
            np.testing.assert_array_equal(clip[t], np.roll(clip[t - 1], (2 * dy, 2 * dx), axis=(0, 1)))
    assert direction_names(4) == ["right", "down", "left", "up"]


def probe_accuracy(train_x, train_y, val_x, val_y, classes, steps=200):
    """A linear softmax probe on flattened inputs, trained full-batch: validation accuracy."""
    torch.manual_seed(0)
    train_x, val_x = (torch.tensor(a, dtype=torch.float32).flatten(1) / 255 for a in (train_x, val_x))
    probe = torch.nn.Linear(train_x.size(1), classes)
    optimiser = torch.optim.Adam(probe.parameters(), lr=1e-2)
    for _ in range(steps):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(probe(train_x), torch.tensor(train_y)).backward()
        optimiser.step()
    return (probe(val_x).argmax(-1) == torch.tensor(val_y)).float().mean().item()


def test_a_single_frame_tells_nothing_but_two_frames_do(digits):
    """A linear probe on one frame is at chance (1/4 with four directions); on the signed product of
    a frame and its neighbour shifted one step right it is not: the motion is in the frames' relation."""
    train_x, train_y = moving_digits(digits[:400], 2000, directions=4, seed=1)
    val_x, val_y = moving_digits(digits[400:], 500, directions=4, seed=2)
    single = probe_accuracy(train_x[:, 3], train_y, val_x[:, 3], val_y, 4)
    assert single < 0.33

    def motion(x):  # how well frame 1 matches frame 0 moved each of the four ways
        x = x.astype(np.float32)
        return np.stack([(x[:, 1] * np.roll(x[:, 0], (2 * dy, 2 * dx), axis=(1, 2))).sum((1, 2))
                         for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0))], axis=1)[:, :, None] / 255
    assert probe_accuracy(motion(train_x), train_y, motion(val_x), val_y, 4) > 0.9


def test_splits_are_written_from_disjoint_digits(tmp_path, data_dir):
    paths = write_splits(data_dir / "mnist" / "mnist_t10k_first8000.npz", tmp_path, {"train": 20, "val": 10},
                         frames=8)
    with np.load(paths["train"]) as train, np.load(paths["val"]) as val:
        assert train["x"].shape == (20, 8, 32, 32) and val["x"].shape == (10, 8, 32, 32)
        assert list(train["label_names"]) == direction_names(8)
    with pytest.raises(UserError):
        moving_digits(np.zeros((3, 16, 16), np.uint8), 2, frames=4)
