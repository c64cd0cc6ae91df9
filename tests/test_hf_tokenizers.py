"""Hugging Face tokenizer directories load through the `tokenizers` library: tokenizer.json,
vocab.txt (WordPiece) and vocab.json + merges.txt (byte-level BPE), with the reference's ids."""

import shutil

import pytest

from attnlab.errors import UserError
from attnlab.interop import minilm_path
from attnlab.tokenizers import load_hf_tokenizer

transformers = pytest.importorskip("transformers")
TEXTS = ["Hello, World! Tokenizers split words.", "unbelievably naïve café owners", "x"]


def test_vocab_txt_wordpiece_matches_tokenizer_json(tmp_path):
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(minilm_path() / name, tmp_path / name)
    from_vocab = load_hf_tokenizer(tmp_path).batch_encode(TEXTS)
    from_json = load_hf_tokenizer(minilm_path()).batch_encode(TEXTS)
    reference = transformers.BertTokenizer(str(tmp_path / "vocab.txt"))(TEXTS, padding=True, return_tensors="pt")
    for key in from_json:
        assert from_vocab[key].tolist() == from_json[key].tolist() == reference[key].tolist()


def test_vocab_json_and_merges_byte_level_bpe(tmp_path):
    from tokenizers import implementations
    trainer = implementations.ByteLevelBPETokenizer()
    trainer.train_from_iterator(TEXTS * 20, vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    trainer.save_model(str(tmp_path))
    ours = load_hf_tokenizer(tmp_path)
    reference = transformers.RobertaTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    for text in TEXTS:
        assert ours.encode(text) == reference(text)["input_ids"]
        assert ours.decode(ours.encode(text)[1:-1]) == text


def test_no_tokenizer_files(tmp_path):
    with pytest.raises(UserError, match="has no tokenizer"):
        load_hf_tokenizer(tmp_path)
