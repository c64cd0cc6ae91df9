"""Masked language modelling (BERT): corrupt 15 % of the tokens and predict them.

Of the chosen tokens 80 % become [MASK], 10 % a random token and 10 % stay as they are;
special tokens ([CLS], [SEP], [PAD], ...) are never chosen. With whole-word masking every
WordPiece of a chosen word is chosen (a "##" piece continues the word before it). Optional
next-sentence prediction pairs a segment with its true continuation half the time and with
a random segment otherwise.
"""

import numpy as np
import torch

from ..errors import UserError
from .batch import Batch


def mask_tokens(input_ids, *, mask_id, vocab_size, special, generator, mask_prob=0.15, word_starts=None):
    """input_ids (B, T) -> (corrupted inputs (B, T), labels (B, T) with -100 where not chosen).

    special (B, T) bool: positions never chosen. word_starts (B, T) bool: where words begin,
    for whole-word masking (None: each token on its own). Every row gets at least one choice.
    """
    b, t = input_ids.shape
    eligible = ~special
    draw = torch.rand(b, t, generator=generator)
    if word_starts is not None:  # a token takes the draw of the first piece of its word
        starts = word_starts | special
        starts[:, 1:] |= special[:, :-1]  # a piece right after [CLS] or [SEP] begins its (cut) word
        first = torch.where(starts, torch.arange(t).expand(b, t), 0).cummax(dim=1).values
        draw = draw.gather(1, first)
    chosen = (draw < mask_prob) & eligible
    empty = ~chosen.any(dim=1) & eligible.any(dim=1)
    if empty.any():  # a row with no choice would give no loss: take its lowest draw
        fallback = torch.where(eligible, draw, 2.0).argmin(dim=1)
        chosen[empty.nonzero().squeeze(1), fallback[empty]] = True
    labels = input_ids.masked_fill(~chosen, -100)
    action = torch.rand(b, t, generator=generator)
    inputs = input_ids.masked_fill(chosen & (action < 0.8), mask_id)
    to_random = chosen & (action >= 0.8) & (action < 0.9)
    random_ids = torch.randint(vocab_size, (b, t), generator=generator)
    inputs = torch.where(to_random, random_ids, inputs)
    return inputs, labels


def special_ids(tokenizer) -> dict:
    """The ids MLM needs: [CLS]/<s>, [SEP]/</s>, [MASK]/<mask>, and all special tokens."""
    def find(*names):
        for name in names:
            token_id = tokenizer.token_to_id(name)
            if token_id is not None:
                return token_id
        raise UserError(f"the tokenizer has no {names[0]} token; masked LM needs a BERT-style tokenizer "
                        "(tokenizer.kind: wordpiece, or tokenizer.path pointing at a Hugging Face tokenizer)")

    ids = {"cls": find("[CLS]", "<s>"), "sep": find("[SEP]", "</s>"), "mask": find("[MASK]", "<mask>")}
    added = tokenizer.backend.get_added_tokens_decoder()
    ids["all"] = sorted({*ids.values(), *(i for i, tok in added.items() if tok.special)})
    return ids


def continuation_table(tokenizer) -> torch.Tensor:
    """(V,) bool: True for a WordPiece that continues the previous word ("##ing")."""
    prefix = getattr(tokenizer.backend.model, "continuing_subword_prefix", None)
    if type(tokenizer.backend.model).__name__ != "WordPiece" or not prefix:
        raise UserError("whole-word masking needs a WordPiece tokenizer (tokenizer.kind: wordpiece)")
    table = torch.zeros(tokenizer.vocab_size, dtype=torch.bool)
    for token, token_id in tokenizer.backend.get_vocab().items():
        table[token_id] = token.startswith(prefix)
    return table


class MLMBlocks:
    """Random windows of a token stream -> [CLS] A [SEP] (B [SEP]) with MLM corruption.

    nsp: split each window into A and B; half the rows replace B by a random segment and get
    next_sentence_label 1 (0 = B really follows A, as in BERT)."""

    def __init__(self, splits: dict, tokenizer, seq_len: int, batch_size: int, mask_prob=0.15,
                 whole_word=False, nsp=False):
        if not 0 < mask_prob < 1:
            raise UserError(f"data.mask_prob must be in (0, 1), got {mask_prob}")
        body = seq_len - (3 if nsp else 2)
        if body < (2 if nsp else 1):
            raise UserError(f"seq_len {seq_len} is too short for masked LM; use at least {5 if nsp else 3}")
        for name, ids in splits.items():
            if len(ids) <= body * (2 if nsp else 1):
                raise UserError(f"the {name} split has {len(ids)} tokens, too few for sequences of {seq_len}; "
                                "use more text, a smaller seq_len or a different val_fraction")
        self.splits, self.body, self.batch_size = splits, body, batch_size
        self.mask_prob, self.nsp = mask_prob, nsp
        self.ids = special_ids(tokenizer)
        self.vocab_size = tokenizer.vocab_size
        self.continuation = continuation_table(tokenizer) if whole_word else None

    def _window(self, data, generator, length):
        start = torch.randint(len(data) - length, (1,), generator=generator).item()
        return data[start:start + length].astype(np.int64)

    def _row(self, data, generator):
        """-> (ids, token types, nsp label) of one sequence."""
        cls, sep = self.ids["cls"], self.ids["sep"]
        if not self.nsp:
            return [cls, *self._window(data, generator, self.body), sep], [0] * (self.body + 2), 0
        start = torch.randint(len(data) - self.body, (1,), generator=generator).item()
        cut = torch.randint(1, self.body, (1,), generator=generator).item()
        first = data[start:start + cut].astype(np.int64)
        second = data[start + cut:start + self.body].astype(np.int64)
        is_random = torch.rand(1, generator=generator).item() < 0.5
        if is_random:
            second = self._window(data, generator, len(second))
        ids = [cls, *first, sep, *second, sep]
        types = [0] * (len(first) + 2) + [1] * (len(second) + 1)
        return ids, types, int(is_random)

    def sample(self, split: str, generator: torch.Generator) -> Batch:
        rows = [self._row(self.splits[split], generator) for _ in range(self.batch_size)]
        ids = torch.tensor([r[0] for r in rows])  # (B, T)
        special = torch.isin(ids, torch.tensor(self.ids["all"]))
        word_starts = None if self.continuation is None else ~self.continuation[ids]
        inputs, labels = mask_tokens(ids, mask_id=self.ids["mask"], vocab_size=self.vocab_size, special=special,
                                     generator=generator, mask_prob=self.mask_prob, word_starts=word_starts)
        batch = {"input_ids": inputs, "attention_mask": torch.ones_like(ids),
                 "token_type_ids": torch.tensor([r[1] for r in rows]), "labels": labels}
        if self.nsp:
            batch["next_sentence_label"] = torch.tensor([r[2] for r in rows])
        return Batch(batch, batch["attention_mask"].sum(dim=1))  # no padding: every row is seq_len long
