"""attnlab embed / search / convert on the command line (MiniLM weights from the package)."""

import io
import json
import sys

import numpy as np
import pytest
import torch

from attnlab.cli import main
from attnlab.inference.embeddings import SentenceEncoder
from attnlab.inference.search import split_passages
from attnlab.interop import import_hf, load_minilm

DOCUMENT = """How to bake bread at home with flour, water, salt and yeast.
The football match ended in a draw after extra time.
Python is a programming language loved by data scientists.
Tips for keeping houseplants alive through the winter.
"""


@pytest.fixture(scope="module")
def minilm_encoder():
    return SentenceEncoder(*load_minilm())


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_embed_stdin_to_json_lines(capsys, monkeypatch, minilm_encoder):
    monkeypatch.setattr(sys, "stdin", io.StringIO("first text\n\n  second text  \n"))
    code, out, _ = run(capsys, "embed")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["text"] for r in rows] == ["first text", "second text"]
    expected = minilm_encoder.encode(["first text", "second text"])
    assert np.abs(np.array([r["embedding"] for r in rows]) - expected.numpy()).max() < 1e-6


def test_embed_file_to_npy(tmp_path, capsys, minilm_encoder):
    texts = tmp_path / "texts.txt"
    texts.write_text(DOCUMENT)
    code, _, err = run(capsys, "embed", texts, "--out", tmp_path / "e.npy", "--batch-size", 3)
    assert code == 0 and "embedded 4 texts" in err
    vectors = np.load(tmp_path / "e.npy")
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    assert np.abs(vectors - minilm_encoder.encode(DOCUMENT.splitlines()).numpy()).max() < 1e-6


@pytest.mark.parametrize("argv,message", [
    (["embed", "missing.txt"], "does not exist"),
    (["embed", "{texts}", "--out", "e.csv"], "must end in .npy or .jsonl"),
    (["embed", "{empty}"], "no texts to embed"),
    (["embed", "{texts}", "--model", "{tmp}"], "neither a checkpoint"),
    (["search", "missing.txt", "query"], "does not exist"),
])
def test_bad_input_exits_2(tmp_path, capsys, argv, message):
    (tmp_path / "texts.txt").write_text(DOCUMENT)
    (tmp_path / "empty.txt").write_text("\n\n")
    argv = [a.format(texts=tmp_path / "texts.txt", empty=tmp_path / "empty.txt", tmp=tmp_path) for a in argv]
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err and "Traceback" not in err


def search_json(capsys, *argv):
    code, out, err = run(capsys, "search", *argv, "--json")
    assert code == 0
    return [json.loads(line) for line in out.splitlines()], err


def test_search_finds_the_right_passage_and_reuses_its_index(tmp_path, capsys):
    doc = tmp_path / "doc.txt"
    doc.write_text(DOCUMENT)
    results, err = search_json(capsys, doc, "making a loaf of bread", "soccer game result", "--top-k", 2)
    assert "built index" in err
    assert results[0]["results"][0]["line"] == 1 and results[1]["results"][0]["line"] == 2
    scores = [r["score"] for r in results[0]["results"]]
    assert len(scores) == 2 and scores[0] > scores[1]
    index = tmp_path / "doc.txt.attnlab-index.npz"
    stamp = index.stat().st_mtime_ns

    again, err = search_json(capsys, doc, "making a loaf of bread", "--top-k", 2)
    assert "reused index" in err and index.stat().st_mtime_ns == stamp
    assert again[0] == results[0]

    doc.write_text(DOCUMENT + "A recipe for sourdough bread with a long rise.\n")  # the file changes
    changed, err = search_json(capsys, doc, "sourdough recipe", "--top-k", 1)
    assert "built index" in err
    assert changed[0]["results"][0]["line"] == 5


def test_search_by_paragraph(tmp_path, capsys):
    doc = tmp_path / "doc.txt"
    doc.write_text("Cats purr.\nThey sleep a lot.\n\n\nThe stock market crashed.\nInvestors panicked.\n")
    assert split_passages(doc.read_text(), "paragraphs") == [
        (1, "Cats purr. They sleep a lot."), (5, "The stock market crashed. Investors panicked.")]
    results, _ = search_json(capsys, doc, "finance news", "--unit", "paragraphs", "--top-k", 1)
    assert results[0]["results"][0]["line"] == 5


def test_convert_import_then_export(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=48, max_position_embeddings=32)
    reference = transformers.BertForMaskedLM(config).eval()
    reference.save_pretrained(tmp_path / "hf")

    code, out, _ = run(capsys, "convert", "import", tmp_path / "hf", tmp_path / "ours")
    assert code == 0 and json.loads(out)["family"] == "bert"
    code, _, _ = run(capsys, "convert", "export", tmp_path / "ours", tmp_path / "back")
    assert code == 0
    back = transformers.BertForMaskedLM.from_pretrained(tmp_path / "back").eval()
    ids = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        assert (back(input_ids=ids).logits - reference(input_ids=ids).logits).abs().max() <= 1e-5
    ours, _ = import_hf(tmp_path / "back")
    assert ours.config.head == "mlm"

    code, _, err = run(capsys, "convert", "export", tmp_path / "ours", tmp_path / "back")
    assert code == 2 and "not empty" in err


def test_convert_minilm_checkpoint_embeds_the_same(tmp_path, capsys, monkeypatch, minilm_encoder):
    code, _, _ = run(capsys, "convert", "import", "minilm", tmp_path / "minilm")
    assert code == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO("a sentence to embed\n"))
    code, out, _ = run(capsys, "embed", "--model", tmp_path / "minilm")
    assert code == 0
    vector = np.array(json.loads(out)["embedding"])
    assert np.abs(vector - minilm_encoder.encode(["a sentence to embed"])[0].numpy()).max() < 1e-6
