"""What encoder-decoder families share: teacher forcing, the loss, and the interface that
decoding relies on.

A `Seq2SeqModel` implements `encode(input_ids, attention_mask) -> memory (B, S, C)` and
`decode(decoder_input_ids, memory, attention_mask, cache=None, ...) -> logits (B, T, V)`;
its config names `pad_id`, `eos_id`, `decoder_start_id`, `max_seq_len` (longest source) and
`max_target_len`, and `length_fields`: the fields a user sets to change those two.
"""

import torch
import torch.nn.functional as F

from ..errors import UserError
from .base import Model, ModelOutput

IGNORE_INDEX = -100


def shift_right(labels: torch.Tensor, start_id: int, pad_id: int) -> torch.Tensor:
    """(B, T) targets -> (B, T) decoder inputs: the start token, then the targets but the last."""
    inputs = labels.new_full(labels.shape, start_id)
    inputs[:, 1:] = labels[:, :-1]
    return inputs.masked_fill(inputs == IGNORE_INDEX, pad_id)


class Seq2SeqModel(Model):
    def encode(self, input_ids, attention_mask=None):
        raise NotImplementedError

    def decode(self, decoder_input_ids, memory, attention_mask=None, decoder_attention_mask=None, cache=None):
        raise NotImplementedError

    @property
    def n_decoder_layer(self) -> int:
        return len(self.decoder_blocks)

    def check_source_length(self, length: int):
        limit = self.config.max_seq_len
        if length > limit:
            raise UserError(f"source of {length} tokens is longer than this model allows ({limit}); "
                            "shorten or split the input")

    def forward(self, input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                labels=None):
        """input_ids (B, S) with attention_mask (B, S) of 1 = token, 0 = padding; labels (B, T) are
        the target ids (-100 ignored), from which decoder_input_ids are made when not given.
        -> ModelOutput(logits (B, T, V), loss)."""
        c = self.config
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("pass decoder_input_ids or labels")
            decoder_input_ids = shift_right(labels, c.decoder_start_id, c.pad_id)
        memory = self.encode(input_ids, attention_mask)
        logits = self.decode(decoder_input_ids, memory, attention_mask, decoder_attention_mask)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX,
                                   label_smoothing=c.label_smoothing)
        return ModelOutput(logits=logits, loss=loss, hidden_states=memory)
