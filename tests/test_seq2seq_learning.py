"""A tiny original Transformer learns a toy transduction that needs attention: reversing a
digit string. The full check (>= 99 % exact match on held-out strings of up to 5 digits, about
10 minutes on a busy 2-core CPU) is marked slow; the fast one runs the same path for 150 steps on
strings of up to 3 digits and asks for >= 50 % (an untrained model gets 0 %)."""

import random

import pytest
import torch

from attnlab.data.seq2seq import Seq2SeqBatches, encode_pairs, encode_source, train_seq2seq_tokenizer
from attnlab.processors import Seq2SeqTokenizers
from attnlab.inference import Sampling
from attnlab.inference.seq2seq import seq2seq_generate
from attnlab.models import TransformerConfig, build_model
from attnlab.training import TrainConfig, Trainer


def reversal_exact_match(tmp_path, max_len, steps, d_model, n_layer, lr, prenorm):
    rng = random.Random(0)

    def strings(n, min_len):
        return ["".join(rng.choice("0123456789") for _ in range(rng.randint(min_len, max_len))) for _ in range(n)]

    # held out: strings of the longest three lengths never seen in training (the shortest
    # lengths have too few strings to hold any out without leaving training without them)
    held_out = sorted(set(strings(200, max_len - 2)))
    train = [s for s in strings(4000, 1) if s not in set(held_out)]
    tokenizers = Seq2SeqTokenizers(train_seq2seq_tokenizer("char", ["0123456789"]))
    torch.manual_seed(0)
    model = build_model(TransformerConfig(vocab_size=tokenizers.source.vocab_size, d_model=d_model, n_head=4,
                                          ffn_hidden=4 * d_model, n_encoder_layer=n_layer, n_decoder_layer=n_layer,
                                          dropout=0.0, label_smoothing=0.0, max_positions=16, prenorm=prenorm))
    splits = {name: encode_pairs([(s, s[::-1]) for s in part], tokenizers) for name, part in
              (("train", train), ("val", held_out))}
    config = TrainConfig(max_steps=steps, batch_size=64, lr=lr, min_lr=lr / 20, warmup_steps=30, weight_decay=0.0,
                         eval_interval=steps, eval_batches=1, log_interval=steps, progress=False)
    Trainer(model, config, Seq2SeqBatches(splits, 64), tmp_path).train()
    outputs = seq2seq_generate(model.eval(), [encode_source(tokenizers, s) for s in held_out],
                               Sampling(max_new_tokens=max_len + 1, temperature=0))
    return sum(tokenizers.target.decode(o) == s[::-1] for o, s in zip(outputs, held_out)) / len(held_out)


def test_tiny_transformer_learns_to_reverse_short_digit_strings(tmp_path):
    assert reversal_exact_match(tmp_path, max_len=3, steps=150, d_model=32, n_layer=1, lr=3e-3, prenorm=False) >= 0.5


@pytest.mark.slow
def test_tiny_transformer_reverses_digit_strings_99_percent(tmp_path):
    assert reversal_exact_match(tmp_path, max_len=5, steps=800, d_model=64, n_layer=2, lr=3e-3, prenorm=False) >= 0.99
