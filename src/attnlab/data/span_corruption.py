"""T5's span-corruption objective: drop random spans of a token sequence (15 % of the tokens,
spans of 3 on average), replace each span in the input by a sentinel token, and ask for
each sentinel followed by the tokens it replaced.

    ids      a b c d e f g h i j
    inputs   a b <s0> e f g <s1> j            (h i and c d were dropped)
    targets  <s0> c d <s1> h i
"""

import torch

from ..errors import UserError
from .batch import Batch
from .seq2seq import collate


def _random_partition(total: int, parts: int, generator) -> list:
    """`total` split into `parts` positive lengths, uniformly among the ways to cut it."""
    cuts = (torch.randperm(total - 1, generator=generator)[:parts - 1] + 1).sort().values.tolist()
    edges = [0] + cuts + [total]
    return [b - a for a, b in zip(edges, edges[1:])]


def span_corruption(ids: list, sentinel_ids: list, generator: torch.Generator, noise_density: float = 0.15,
                    mean_span: float = 3.0) -> tuple:
    """ids (a list of at least 2 tokens) -> (inputs, targets). Kept and dropped spans alternate,
    starting with a kept one; the i-th dropped span becomes sentinel_ids[i]."""
    n = len(ids)
    if n < 2:
        raise ValueError("span corruption needs at least two tokens")
    n_noise = min(n - 1, max(1, round(n * noise_density)))
    n_spans = min(max(1, round(n_noise / mean_span)), n_noise, n - n_noise, len(sentinel_ids))
    noise = _random_partition(n_noise, n_spans, generator)
    keep = _random_partition(n - n_noise, n_spans, generator)
    inputs, targets, position = [], [], 0
    for sentinel, kept, dropped in zip(sentinel_ids, keep, noise):
        inputs += ids[position:position + kept] + [sentinel]
        position += kept
        targets += [sentinel] + ids[position:position + dropped]
        position += dropped
    return inputs, targets


class SpanCorruptionBatches:
    """Random windows of `window` tokens from each split's ids, corrupted; sources and targets
    end with eos, padded as seq2seq pairs."""

    def __init__(self, splits: dict, window: int, batch_size: int, sentinel_ids: list, eos_id: int, pad_id: int):
        for name, ids in splits.items():
            if len(ids) <= window:
                raise UserError(f"the {name} split has {len(ids)} tokens, too few for windows of {window}; "
                                "use more text, a smaller data.window or a different val_fraction")
        self.splits, self.window, self.batch_size = splits, window, batch_size
        self.sentinel_ids, self.eos_id, self.pad_id = sentinel_ids, eos_id, pad_id

    def sample(self, split: str, generator: torch.Generator) -> Batch:
        data = self.splits[split]
        starts = torch.randint(len(data) - self.window, (self.batch_size,), generator=generator).tolist()
        pairs = []
        for start in starts:
            inputs, targets = span_corruption([int(i) for i in data[start:start + self.window]], self.sentinel_ids,
                                              generator)
            pairs.append((inputs + [self.eos_id], targets + [self.eos_id]))
        return collate(pairs, self.pad_id)
