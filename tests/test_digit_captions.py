"""Digit captions: held-out pairs and templates never reach training, splits share no digit image,
and every caption says what its image shows."""

import functools
import json

import numpy as np
import pytest

from attnlab.data.digit_captions import SPLITS, TEMPLATES, build, caption, held_out_pairs
from attnlab.errors import UserError
from attnlab.processors.image import ImageProcessor

COUNTS = {"train": 600, "val": 200, "test": 200}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from tests.conftest import DATA

    out = tmp_path_factory.mktemp("captions")
    manifest = build(DATA / "mnist" / "mnist_t10k_first8000.npz", out, COUNTS, held_out=6, seed=3)
    with np.load(DATA / "mnist" / "mnist_t10k_first8000.npz") as data:
        return out, manifest, data["images"], data["labels"]


def lines(out, kind, split):
    return [json.loads(line) for line in (out / kind / split / "pairs.jsonl").read_text().splitlines()]


def pixels(out, kind, split, line):
    return ImageProcessor().read(out / kind / split / line["image"])


@functools.cache
def digit_images(out, kind, split) -> list:
    """Every digit image shown in a split, as bytes (a pair's two halves count as two)."""
    shown = []
    for line in lines(out, kind, split):
        image = pixels(out, kind, split, line)
        shown += [image.tobytes()] if kind == "single" else [image[14:42, :28].tobytes(), image[14:42, 28:].tobytes()]
    return shown


def test_captions_fill_their_templates():
    assert caption("a {left} to the left of a {right}", (3, 7)) == "a 3 to the left of a 7"
    assert caption("the number {word}", (7,)) == "the number seven"
    assert caption("the number {left_word} followed by {right_word}", (0, 9)) == "the number zero followed by nine"


def test_held_out_pairs_never_reach_training_and_fill_half_of_val_and_test(built):
    out, manifest, _, _ = built
    hidden = {tuple(p) for p in manifest["held_out_pairs"]}
    assert len(hidden) == 6 and all(a < b for a, b in hidden)
    unordered = [tuple(sorted(line["digits"])) for line in lines(out, "pairs", "train")]
    assert not hidden & set(unordered) and len(set(unordered)) == 55 - 6  # 45 distinct-digit pairs + 10 doubles
    for split in ("val", "test"):
        shown = [tuple(line["digits"]) for line in lines(out, "pairs", split)]
        assert sum(tuple(sorted(p)) in hidden for p in shown) == COUNTS[split] // 2
        assert {p for p in shown if tuple(sorted(p)) in hidden} == {p for a, b in hidden for p in ((a, b), (b, a))}


@pytest.mark.parametrize("kind", ["single", "pairs"])
def test_held_out_templates_only_outside_training(built, kind):
    out = built[0]
    held = set(TEMPLATES[kind]["held_out"])
    assert {line["template"] for line in lines(out, kind, "train")} == set(TEMPLATES[kind]["train"])
    for split in ("val", "test"):
        assert held <= {line["template"] for line in lines(out, kind, split)}
    unseen = {caption(t, (d,) if kind == "single" else (d, e)) for t in held for d in range(10) for e in range(10)}
    assert not unseen & {line["text"] for line in lines(out, kind, "train")}


@pytest.mark.parametrize("kind", ["single", "pairs"])
def test_each_caption_names_the_digits_its_image_shows(built, kind):
    out, _, images, labels = built
    for split, (low, high) in SPLITS.items():
        label_of = {images[i].tobytes(): int(labels[i]) for i in range(low, high)}  # this split's source only
        split_lines = lines(out, kind, split)[:300]
        shown = digit_images(out, kind, split)
        for i, line in enumerate(split_lines):
            width = len(line["digits"])
            assert [label_of[image] for image in shown[width * i:width * (i + 1)]] == line["digits"]
            assert line["text"] == caption(line["template"], tuple(line["digits"]))


@pytest.mark.parametrize("kind", ["single", "pairs"])
def test_splits_share_no_digit_image(built, kind):
    out = built[0]
    shown = {split: set(digit_images(out, kind, split)) for split in SPLITS}
    assert not shown["train"] & shown["val"] and not shown["train"] & shown["test"] and not shown["val"] & shown["test"]
    if kind == "single":
        assert [len(shown[split]) for split in SPLITS] == [6000, 1000, 1000]


def test_a_seed_fixes_everything_and_a_build_is_never_overwritten(built, tmp_path):
    out, manifest, _, _ = built
    assert held_out_pairs(6, 3) == [tuple(p) for p in manifest["held_out_pairs"]] != held_out_pairs(6, 4)
    again = build(manifest["source"], tmp_path, {"train": 20, "val": 10, "test": 10}, held_out=6, seed=3)
    assert again["held_out_pairs"] == manifest["held_out_pairs"]
    assert lines(tmp_path, "single", "train") == lines(out, "single", "train")
    with pytest.raises(UserError, match="already holds"):
        build(manifest["source"], tmp_path, COUNTS, held_out=6, seed=3)
    with pytest.raises(UserError, match="held-out pairs"):
        held_out_pairs(44, 0)
    with pytest.raises(UserError, match="main template's share"):
        build(manifest["source"], tmp_path / "share", COUNTS, main_share=1.5)
    assert not (tmp_path / "share").exists()  # refused before anything is written


def test_a_pair_of_two_digits_has_its_swapped_caption_as_hard_negative(built):
    out = built[0]
    for split in SPLITS:
        for line in lines(out, "pairs", split):
            left, right = line["digits"]
            if left == right:
                assert "hard_negative" not in line
            else:
                assert line["hard_negative"] == caption(line["template"], (right, left)) != line["text"]


def test_half_the_training_pair_captions_use_the_first_template(built):
    out, manifest, _, _ = built
    main = TEMPLATES["pairs"]["train"][0]
    share = {split: np.mean([line["template"] == main for line in lines(out, "pairs", split)]) for split in SPLITS}
    assert manifest["main_share"] == 0.5
    assert 0.5 < share["train"] < 0.7  # 0.5 + 0.5 / 5 expected, from 600 captions
    assert share["val"] < 0.3 and share["test"] < 0.3  # one template in seven
