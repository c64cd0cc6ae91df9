"""Labelled images, audio or video for classifiers, whatever the modality: read, split, batched.

A labelled set is either

    a folder with one subfolder per class    root/<label>/<file>, each file read by the processor
    an .npz of arrays                        x (N, ...) raw items, y (N,) labels (ids or names),
                                             optional label_names (C,) naming the ids of y; x may
                                             be called images, audio or video, y labels

The label names are sorted folder names, `label_names`, or the sorted distinct values of y.
"""

import dataclasses
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .batch import Batch

ITEM_ARRAYS, LABEL_ARRAYS = ("x", "images", "audio", "video"), ("y", "labels")  # the names an .npz may use


@dataclasses.dataclass
class LabelledMedia:
    items: list  # raw items (np.ndarray each), as the processor reads them
    labels: np.ndarray  # (N,) int64 ids into names
    names: list  # label strings, by id

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, indices) -> "LabelledMedia":
        return LabelledMedia([self.items[i] for i in indices], self.labels[indices], self.names)


def read_labelled_media(path, processor, names: list | None = None) -> LabelledMedia:
    """The labelled set at `path` (folder or .npz). `names` (a model's labels) fixes the ids:
    a label outside them is one line naming it."""
    path = Path(path)
    if path.is_dir():
        data = _read_folder(path, processor)
    elif path.suffix.lower() == ".npz" and path.is_file():
        data = _read_npz(path, processor)
    elif not path.exists():
        raise UserError(f"data {path} does not exist")
    else:
        raise UserError(f"{path}: labelled {processor.modality} data is a folder with one subfolder per class or an "
                        ".npz with arrays x and y")
    return data if names is None else relabel(data, names, path)


def relabel(data: LabelledMedia, names: list, source) -> LabelledMedia:
    """`data` with its labels as ids into `names`."""
    unknown = sorted(set(data.names) - set(names))
    if unknown:
        raise UserError(f"{source} has label(s) {', '.join(unknown)} the model does not know; it knows "
                        f"{', '.join(names)}")
    index = {name: i for i, name in enumerate(names)}
    ids = np.array([index[data.names[i]] for i in data.labels], dtype=np.int64)
    return LabelledMedia(data.items, ids, list(names))


def _read_folder(root: Path, processor) -> LabelledMedia:
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(f"{root} has no class subfolders; put each class's files in {root}/<label>/")
    items, labels = [], []
    for label, folder in enumerate(classes):
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        items += [processor.read(f) for f in files]
        labels += [label] * len(files)
    if not items:
        raise UserError(f"the class subfolders of {root} hold no files")
    return LabelledMedia(items, np.array(labels, dtype=np.int64), [p.name for p in classes])


def _read_npz(path: Path, processor) -> LabelledMedia:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            found = {name: arrays[name] for name in arrays.files}
    except (ValueError, OSError) as err:
        raise UserError(f"{path} is not a readable .npz of plain arrays ({err})") from None
    x_name = next((name for name in ITEM_ARRAYS if name in found), None)
    y_name = next((name for name in LABEL_ARRAYS if name in found), None)
    if x_name is None or y_name is None:
        raise UserError(f"{path} must hold arrays x (N, ...) and y (N,) (or {'/'.join(ITEM_ARRAYS[1:])} and "
                        f"labels); it holds {', '.join(sorted(found)) or 'none'}")
    x, y = found[x_name], found[y_name]
    if y.ndim != 1 or len(x) != len(y) or len(y) == 0:
        raise UserError(f"{path}: x {x.shape} and y {y.shape} must have the same number N > 0 of rows, one label "
                        "each in y")
    items = [processor.check_item(row, f"{path} x[{i}]") for i, row in enumerate(x)]
    if "label_names" in found:
        names = [str(n) for n in found["label_names"]]
        if y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= len(names):
            raise UserError(f"{path}: y must hold ids 0..{len(names) - 1} into label_names")
        return LabelledMedia(items, y.astype(np.int64), names)
    values = sorted(set(y.tolist()))
    index = {v: i for i, v in enumerate(values)}
    return LabelledMedia(items, np.array([index[v] for v in y.tolist()], dtype=np.int64), [str(v) for v in values])


def stratified_split(data: LabelledMedia, val_fraction: float, seed: int) -> tuple:
    """-> (train, val): about val_fraction of each class held out (at least one of a class with
    two or more examples), chosen at random by `seed`."""
    rng = np.random.default_rng(seed)
    val = []
    for label in range(len(data.names)):
        members = np.flatnonzero(data.labels == label)
        if len(members) < 2:
            continue
        count = min(len(members) - 1, max(1, round(val_fraction * len(members))))
        val += rng.choice(members, count, replace=False).tolist()
    held = np.zeros(len(data), dtype=bool)
    held[val] = True
    return data.subset(np.flatnonzero(~held)), data.subset(np.flatnonzero(held))


def processed(data: LabelledMedia, processor, chunk: int = 256) -> dict:
    """The processor's inputs for every item, {key: (N, ...)}, made in chunks."""
    parts = [processor(data.items[start:start + chunk]) for start in range(0, len(data), chunk)]
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


class MediaBatches:
    """Random batches of processed items with their labels, for the trainer ("train" augmented
    when `augment`), and every validation row in order for accuracy. A batch's `row_tokens` counts
    one per example, so the trainer's tokens/s reads as examples/s."""

    def __init__(self, splits: dict, processor, batch_size: int, augment: bool):
        self.inputs = {name: processed(data, processor) for name, data in splits.items()}  # split -> {key: (N, ...)}
        self.labels = {name: torch.from_numpy(data.labels) for name, data in splits.items()}
        self.processor, self.batch_size, self.augment = processor, batch_size, augment

    def sample(self, split: str, generator: torch.Generator) -> Batch:
        rows = torch.randint(len(self.labels[split]), (self.batch_size,), generator=generator)
        inputs = {key: value[rows] for key, value in self.inputs[split].items()}
        if self.augment and split == "train":
            inputs = self.processor.augment(inputs, generator)
        return Batch({**inputs, "labels": self.labels[split][rows]}, torch.ones(self.batch_size, dtype=torch.long))

    @torch.no_grad()
    def val_scores(self, model) -> dict:
        """{"val_accuracy"} over the whole validation split."""
        model.eval()
        device = next(model.parameters()).device
        predicted = [model(**{k: v[start:start + self.batch_size].to(device)
                              for k, v in self.inputs["val"].items()}).logits.argmax(-1).cpu()
                     for start in range(0, len(self.labels["val"]), self.batch_size)]
        model.train()
        return {"val_accuracy": float((torch.cat(predicted) == self.labels["val"]).float().mean())}


def predict_media(model, processor, items: list, batch_size: int = 64) -> torch.Tensor:
    """Class probabilities (N, n_labels) of raw items."""
    device = next(model.parameters()).device
    probabilities = []
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            inputs = processor(items[start:start + batch_size])
            logits = model(**{k: v.to(device) for k, v in inputs.items()}).logits
            probabilities.append(logits.float().softmax(-1).cpu())
    return torch.cat(probabilities)
