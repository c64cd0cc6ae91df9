"""Image-caption pairs for contrastive training: read, split, batched.

A pairs file is JSONL, one pair a line, the image's path relative to the file's folder:

    {"image": "images/00017.png", "text": "a handwritten 7"}

or a folder holding pairs.jsonl. Images are whatever the image processor reads (PNG, JPEG, .npy).
A line may add "hard_negative": a caption that is wrong for its image but close to the right one
("a 7 to the left of a 3" for a 3 left of a 7). Training then ranks it against the image beside the
batch's other captions (NegCLIP, Yuksekgonul et al. 2023), which in-batch negatives alone rarely
make the model do: they differ from the right caption in more than word order.
"""

import dataclasses
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .batch import Batch
from .corpus import jsonl_record

PAIRS_FILE = "pairs.jsonl"


@dataclasses.dataclass
class Pairs:
    items: list  # raw images (np.ndarray each), as the image processor reads them
    texts: list  # their captions
    negatives: list  # a hard negative caption per pair, or None

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, indices) -> "Pairs":
        return Pairs(*([column[i] for i in indices] for column in (self.items, self.texts, self.negatives)))


def is_pairs(path) -> bool:
    """Whether `path` names image-text pairs: a .jsonl file or a folder holding pairs.jsonl."""
    path = Path(path)
    return (path / PAIRS_FILE).is_file() if path.is_dir() else path.suffix.lower() == ".jsonl"


def pairs_file(path) -> Path:
    """The JSONL file of `path`: itself, or the pairs.jsonl of a folder."""
    path = Path(path)
    file = path / PAIRS_FILE if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"{file} does not exist: image-text pairs are a JSONL file of "
                        '{"image": path, "text": caption} lines, or a folder holding pairs.jsonl')
    return file


def read_pairs(path, image_processor) -> Pairs:
    """The pairs at `path` (a JSONL file or a folder holding pairs.jsonl); a bad line or image is
    one line naming it."""
    file = pairs_file(path)
    items, texts, negatives = [], [], []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        record = jsonl_record(line, file, number, "text")
        if not isinstance(record.get("image"), str):
            raise UserError(f"{file} line {number} has no string field 'image' (a path relative to {file.parent})")
        negative = record.get("hard_negative")
        if negative is not None and not isinstance(negative, str):
            raise UserError(f"{file} line {number}: 'hard_negative' must be a caption (a string), got {negative!r}")
        items.append(image_processor.read(file.parent / record["image"]))
        texts.append(record["text"])
        negatives.append(negative)
    if not items:
        raise UserError(f"{file} holds no pairs")
    return Pairs(items, texts, negatives)


def split_pairs(data: Pairs, val_fraction: float, seed: int) -> tuple:
    """-> (train, val): a random val_fraction of the pairs held out (at least two: a contrastive
    batch needs two pairs)."""
    order = np.random.default_rng(seed).permutation(len(data))
    held = max(2, round(val_fraction * len(data)))
    return data.subset(order[held:]), data.subset(order[:held])


class PairBatches:
    """Batches of distinct pairs drawn at random (each pair's negatives are the batch's other
    pairs, and its hard negative caption where it has one), the images processed and the captions
    tokenized once up front. A batch's `row_tokens` counts one per pair, so the trainer's tokens/s
    reads as pairs/s."""

    def __init__(self, splits: dict, processor, batch_size: int, max_length: int, augment: bool = False):
        for name, data in splits.items():
            if len(data) < min(batch_size, 2):
                raise UserError(f"the {name} split has {len(data)} pairs; a contrastive batch needs at least 2")
        self.images = {name: _processed(data.items, processor) for name, data in splits.items()}  # (N, C, S, S)
        self.texts = {name: processor.texts(data.texts, max_length) for name, data in splits.items()}
        self.captions = {name: data.texts for name, data in splits.items()}
        self.negatives = {name: _hard_negatives(data.negatives, processor, max_length)
                          for name, data in splits.items() if any(data.negatives)}
        self.processor, self.batch_size, self.augment = processor, batch_size, augment

    def sample(self, split: str, generator: torch.Generator) -> Batch:
        count = len(self.images[split])
        rows = torch.randperm(count, generator=generator)[:self.batch_size]  # distinct pairs
        inputs = self.rows(split, rows)
        if self.augment and split == "train":
            inputs = {**inputs, **self.processor.image.augment({"pixel_values": inputs["pixel_values"]}, generator)}
        return Batch(inputs, torch.ones(len(rows), dtype=torch.long))

    def rows(self, split: str, rows: torch.Tensor) -> dict:
        """The model inputs of pairs `rows` of a split, each text cut to its longest caption, with
        the hard negatives (negative_ids, negative_mask; has_negative (B,) bool) where the split has any."""
        ids, mask = _trimmed(self.texts[split]["input_ids"][rows], self.texts[split]["attention_mask"][rows])
        inputs = {"pixel_values": self.images[split][rows], "input_ids": ids, "attention_mask": mask}
        if split in self.negatives:
            negatives = self.negatives[split]
            ids, mask = _trimmed(negatives["input_ids"][rows], negatives["attention_mask"][rows])
            inputs.update(negative_ids=ids, negative_mask=mask, has_negative=negatives["present"][rows])
        return inputs

    @torch.no_grad()
    def val_scores(self, model) -> dict:
        """Recall@1 of image -> text and text -> image retrieval over the whole validation split."""
        from ..evaluation.retrieval import embed_pairs, recall_at

        image, text = embed_pairs(model, self, "val")
        return {f"val_{name}": value for name, value in recall_at(image, text, (1,), self.captions["val"]).items()}


def _trimmed(ids: torch.Tensor, mask: torch.Tensor) -> tuple:
    """Right-padded (B, T) ids and mask -> both cut to the longest row."""
    width = int(mask.sum(1).max())
    return ids[:, :width], mask[:, :width]


def _hard_negatives(negatives: list, processor, max_length: int) -> dict:
    """Tokenized hard negatives (N, T) (an empty caption where a pair has none) and present (N,) bool."""
    tokens = processor.texts([text or "" for text in negatives], max_length)
    return {**tokens, "present": torch.tensor([text is not None for text in negatives])}


def _processed(items: list, processor, chunk: int = 256) -> torch.Tensor:
    return torch.cat([processor(items[start:start + chunk])["pixel_values"]
                      for start in range(0, len(items), chunk)])
