"""Masked LM: masking statistics, special tokens, whole words, NSP pairs, and training from the CLI."""

import json

import numpy as np
import pytest
import torch

from attnlab.checkpoint import load_checkpoint
from attnlab.data.mlm import MLMBlocks, mask_tokens
from attnlab.errors import UserError
from attnlab.tokenizers import SubwordTokenizer

TEXT = "\n".join(f"the {a} jumped over the {b} fence while singing number {i}" for i, (a, b) in
                 enumerate([("cat", "wooden"), ("dog", "unbelievable"), ("horse", "tallest")] * 60))


@pytest.fixture(scope="module")
def tokenizer():
    return SubwordTokenizer.train_wordpiece(TEXT, vocab_size=120)


def test_masking_statistics():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 1000, (64, 512))
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True
    inputs, labels = mask_tokens(ids, mask_id=3, vocab_size=1000, special=special, generator=g)
    chosen = labels != -100
    assert abs(chosen[~special].float().mean().item() - 0.15) < 0.005
    assert not chosen[special].any() and torch.equal(inputs[special], ids[special])
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(inputs[~chosen], ids[~chosen])
    n = chosen.sum().item()
    masked = (inputs[chosen] == 3).sum().item() / n
    unchanged = (inputs[chosen] == ids[chosen]).sum().item() / n
    randomised = 1 - masked - unchanged
    assert abs(masked - 0.8) < 0.01 and abs(unchanged - 0.1) < 0.01 and abs(randomised - 0.1) < 0.01


def test_every_row_gets_a_choice():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 100, (200, 4))
    _, labels = mask_tokens(ids, mask_id=3, vocab_size=100, special=torch.zeros_like(ids, dtype=torch.bool),
                            generator=g)
    assert (labels != -100).any(dim=1).all()


def test_whole_word_masking_takes_every_piece():
    g = torch.Generator().manual_seed(0)
    tokenizer = SubwordTokenizer.train_wordpiece(TEXT, vocab_size=80)  # small: most words split into pieces
    splits = {"train": np.array(tokenizer.encode_batch(TEXT.splitlines(), add_special_tokens=False)[0] * 400)}
    pieces = tokenizer.encode_batch(["unbelievable"], add_special_tokens=False)[0]
    assert len(pieces) > 1  # the word is split, so whole-word masking has something to do
    batches = MLMBlocks(splits, tokenizer, seq_len=64, batch_size=64, whole_word=True)
    batch = batches.sample("train", g)
    chosen = batch.inputs["labels"] != -100
    ids = torch.where(chosen, batch.inputs["labels"], batch.inputs["input_ids"])
    special = torch.isin(ids, torch.tensor(batches.ids["all"]))
    # a continuation piece is chosen exactly when the piece before it is (unless a window cut the word)
    follows = batches.continuation[ids][:, 1:] & ~special[:, :-1]
    assert follows.sum() > 100
    assert torch.equal(chosen[:, 1:][follows], chosen[:, :-1][follows])
    assert abs(chosen[:, 1:-1].float().mean().item() - 0.15) < 0.05


def test_special_tokens_never_masked_and_nsp_pairs(tokenizer):
    g = torch.Generator().manual_seed(0)
    ids = np.array(tokenizer.encode_batch([TEXT], add_special_tokens=False)[0])
    batches = MLMBlocks({"train": ids}, tokenizer, seq_len=32, batch_size=200, nsp=True)
    batch = batches.sample("train", g)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    assert (batch.inputs["input_ids"][:, 0] == cls).all()
    assert ((batch.inputs["input_ids"] == sep).sum(dim=1) == 2).all()  # never masked away
    assert (batch.inputs["labels"][batch.inputs["input_ids"] == sep] == -100).all()
    types = batch.inputs["token_type_ids"]
    assert (types[:, 0] == 0).all() and (types[:, -1] == 1).all() and (types.diff(dim=1) >= 0).all()
    assert 0.35 < batch.inputs["next_sentence_label"].float().mean().item() < 0.65


def test_bad_mask_prob(tokenizer):
    with pytest.raises(UserError, match="mask_prob"):
        MLMBlocks({"train": np.arange(1000) % 100}, tokenizer, seq_len=16, batch_size=2, mask_prob=1.5)


def test_train_mlm_with_nsp_from_the_cli(tmp_path):
    from attnlab.cli import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT + "\n")
    out = tmp_path / "run"
    argv = ["train", "task=mlm", "model.n_layer=1", "tokenizer.vocab_size=120", "data.seq_len=24", "data.nsp=true",
            "data.whole_word=true", "train.max_steps=15", "train.eval_interval=15", "train.eval_batches=1",
            "train.log_interval=1", "train.batch_size=8", "train.lr=0.003", "train.warmup_steps=5",
            "train.progress=false", "train.device=cpu", f"--data={corpus}", f"--out={out}", "--preset=bert-tiny"]
    assert main(argv) == 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [m["train_loss"] for m in metrics if "train_loss" in m]
    assert losses[-1] < losses[0] - 0.5  # from about ln(120) + ln(2)
    model, tok = load_checkpoint(out / "last")
    assert model.config.head == "pretraining" and tok.token_to_id("[MASK]") is not None


def test_mlm_rejects_a_gpt_preset(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    from attnlab.cli import main
    assert main(["train", "task=mlm", f"--data={corpus}", f"--out={tmp_path / 'run'}", "--preset=gpt2-nano"]) == 2


def test_a_hugging_face_wordpiece_tokenizer_works_for_mlm():
    from attnlab.data.mlm import continuation_table, special_ids
    from attnlab.interop import minilm_path
    from attnlab.tokenizers import load_hf_tokenizer

    tokenizer = load_hf_tokenizer(minilm_path())
    ids = special_ids(tokenizer)
    assert (ids["cls"], ids["sep"], ids["mask"]) == (101, 102, 103) and 0 in ids["all"]
    table = continuation_table(tokenizer)
    assert table[tokenizer.token_to_id("##s")] and not table[tokenizer.token_to_id("house")]


def test_whole_word_needs_wordpiece():
    bpe = SubwordTokenizer.train_bpe(TEXT, vocab_size=300)
    with pytest.raises(UserError, match="WordPiece"):
        from attnlab.data.mlm import continuation_table
        continuation_table(bpe)


def test_eval_scores_an_encoder_repeatably_and_refuses_a_classifier(tmp_path, tokenizer, capsys):
    from attnlab.checkpoint import save_checkpoint
    from attnlab.cli import main
    from attnlab.models import build_model, preset

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT + "\n")
    model = build_model(preset("bert-mlm-tiny", vocab_size=tokenizer.vocab_size))
    save_checkpoint(tmp_path / "mlm", model, tokenizer)
    capsys.readouterr()
    scores = []
    for _ in range(2):
        assert main(["eval", str(tmp_path / "mlm"), "--data", str(corpus)]) == 0
        scores.append(json.loads(capsys.readouterr().out))
    assert scores[0] == scores[1] and scores[0]["masked_tokens"] > 100
    assert 0 <= scores[0]["accuracy"] <= 1
    assert scores[0]["perplexity"] == pytest.approx(np.exp(scores[0]["loss"]))
    save_checkpoint(tmp_path / "cls", model.with_head("sequence", n_labels=2), tokenizer)
    assert main(["eval", str(tmp_path / "cls"), "--data", str(corpus)]) == 2
    assert "masked-LM head" in capsys.readouterr().err
