"""A training batch: what the model reads, and how much real data that is.

Every batch source (`LMBlocks`, `MLMBlocks`, `Seq2SeqBatches`, `SpanCorruptionBatches`) returns
a `Batch`, so the trainer calls `model(**batch.inputs)` and counts `batch.tokens` without
knowing which tensors a family takes or where its padding is.
"""

import dataclasses

import torch


@dataclasses.dataclass
class Batch:
    inputs: dict  # name -> tensor (B, ...): the keyword arguments of model(**inputs); row i is example i
    row_tokens: torch.Tensor  # (B,) the real (non-padding) tokens the model reads in each row

    @property
    def examples(self) -> int:
        return len(self.row_tokens)

    @property
    def tokens(self) -> int:
        return int(self.row_tokens.sum())

    def rows(self, start: int, stop: int) -> "Batch":
        """The examples start..stop-1 (a data-parallel rank's share of a global batch)."""
        return Batch({name: value[start:stop] for name, value in self.inputs.items()}, self.row_tokens[start:stop])

    def to(self, device: torch.device) -> "Batch":
        return Batch({name: value.to(device, non_blocking=True) for name, value in self.inputs.items()},
                     self.row_tokens)
