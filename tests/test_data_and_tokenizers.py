import numpy as np
import pytest
import torch

from attnlab.data.corpus import LMBlocks, encode_text, read_text, split_ids, write_memmap
from attnlab.errors import UserError
from attnlab.tokenizers import CharTokenizer, SubwordTokenizer, load_tokenizer, train_tokenizer


def test_char_tokenizer_round_trip_and_unknown_characters(tmp_path):
    tok = CharTokenizer.train("hello world")
    assert tok.decode(tok.encode("low hold")) == "low hold"
    with pytest.raises(UserError, match="never saw: 'xz'"):
        tok.encode("zox")
    tok.save(tmp_path)
    assert load_tokenizer(tmp_path).chars == tok.chars


def test_byte_level_bpe_encodes_anything_and_reloads(tmp_path, tiny_text):
    tok = train_tokenizer("bpe", tiny_text.read_text(), vocab_size=300)
    assert 257 < tok.vocab_size <= 300  # the 256 bytes, the end token, and merges
    text = "the cat sat — on ünïcödé 🐈"
    assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode("the cat sat on the mat")) < len("the cat sat on the mat") / 2  # merges were learned
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert isinstance(again, SubwordTokenizer) and again.encode(text) == tok.encode(text)


def test_read_text_file_and_folder_and_bad_inputs(tmp_path):
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "b.txt").write_text("second")
    assert read_text(tmp_path) == "first\nsecond"
    with pytest.raises(UserError, match="does not exist"):
        read_text(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(UserError, match="holds no text"):
        read_text(tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8 text.*offset 3"):
        read_text(tmp_path / "latin1.txt")


@pytest.mark.parametrize("vocab, dtype", [(300, np.uint16), (70_000, np.uint32)])
def test_memmap_uses_the_smallest_dtype(tmp_path, vocab, dtype):
    ids = np.array([0, 5, vocab - 1])
    stored = write_memmap(ids, tmp_path / "ids.bin", vocab)
    assert stored.dtype == dtype and stored.tolist() == ids.tolist()


def test_encode_split_and_blocks(tiny_text):
    tok = CharTokenizer.train(tiny_text.read_text())
    ids = encode_text(tok, tiny_text.read_text(), chunk_chars=1000)
    assert tok.decode(ids.tolist()) == tiny_text.read_text()
    train, val = split_ids(ids, 0.1)
    assert len(train) == int(len(ids) * 0.9) and np.array_equal(np.concatenate([train, val]), ids)
    blocks = LMBlocks({"train": train, "val": val}, block_size=16, batch_size=4)
    batch = blocks.sample("train", torch.Generator().manual_seed(0))
    assert batch.inputs["input_ids"].shape == (4, 16) and (batch.examples, batch.tokens) == (4, 4 * 16)
    assert torch.equal(batch.inputs["input_ids"][:, 1:], batch.inputs["targets"][:, :-1])
    with pytest.raises(UserError, match="too few for blocks of 5000"):
        LMBlocks({"train": train, "val": val}, block_size=5000, batch_size=4)
