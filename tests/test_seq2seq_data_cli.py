"""Seq2seq pairs, batches, the seq2seq training task and the generate/eval verbs; bad inputs
get one clear error (exit code 2)."""

import json
import subprocess
import sys

import pytest
import torch

from attnlab.cli import main
from attnlab.data.seq2seq import Seq2SeqBatches, collate, read_pairs
from attnlab.errors import UserError


def write_pairs(path, n=40, seed=0):
    generator = torch.Generator().manual_seed(seed)
    lines = []
    for _ in range(n):
        length = int(torch.randint(1, 7, (1,), generator=generator))
        digits = "".join(str(int(d)) for d in torch.randint(0, 10, (length,), generator=generator))
        lines.append(f"{digits}\t{digits[::-1]}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_read_pairs_tsv_and_jsonl(tmp_path):
    (tmp_path / "p.tsv").write_text("ein Haus\ta house\n\nzwei\ttwo\n")
    (tmp_path / "p.jsonl").write_text('{"source": "ein Haus", "target": "a house"}\n{"source": "zwei", "target": "two"}\n')
    assert read_pairs(tmp_path / "p.tsv") == read_pairs(tmp_path / "p.jsonl") == [("ein Haus", "a house"),
                                                                                 ("zwei", "two")]


@pytest.mark.parametrize("name,content,message", [
    ("empty.tsv", "\n\n", "holds no pairs"),
    ("cols.tsv", "a\tb\nc\td\te\n", "line 2: expected 2 tab-separated columns"),
    ("one.tsv", "just a source\n", "line 1: expected 2 tab-separated columns .* found 1"),
    ("bad.jsonl", '{"source": "a"}\n', 'line 1: expected an object with string fields "source" and "target"'),
    ("broken.jsonl", '{"source": \n', "line 1: not valid JSON"),
])
def test_bad_pairs_files_are_user_errors(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(UserError, match=message):
        read_pairs(tmp_path / name)


def test_batches_are_padded_to_their_longest_pair_and_grouped_by_length():
    pairs = [([5] * n + [1], [6] * (n % 4 + 1) + [1]) for n in range(1, 60)]
    batch = collate(pairs[:3])
    assert batch["input_ids"].tolist() == [[5, 1, 0, 0], [5, 5, 1, 0], [5, 5, 5, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch["labels"][0].tolist() == [6, 6, 1, -100, -100]
    batches = Seq2SeqBatches({"train": pairs}, batch_size=8)
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        lengths = batches.sample("train", generator)["attention_mask"].sum(1)
        assert lengths.max() - lengths.min() <= 7  # neighbours in length, not a random mix of 1..59


TINY_TRANSFORMER = ["model.preset=transformer-tiny", "model.d_model=32", "model.ffn_hidden=64",
                    "model.n_encoder_layer=1", "model.n_decoder_layer=1"]
TINY_T5 = ["model.preset=t5-tiny", "model.d_model=32", "model.d_ff=64", "model.d_kv=8", "model.n_layer=1"]


def train(tmp_path, *overrides, model=TINY_TRANSFORMER, steps=3):
    data = write_pairs(tmp_path / "rev.tsv")
    out = tmp_path / "run"
    code = main(["train", "task=seq2seq", f"data.train={data}", *model, f"train.max_steps={steps}",
                 f"train.eval_interval={steps}", "train.eval_batches=1", "train.batch_size=8", "train.progress=false",
                 *overrides, "--out", str(out)])
    return code, out, data


@pytest.mark.parametrize("model,overrides", [(TINY_TRANSFORMER, []), (TINY_T5, []),
                                             (TINY_TRANSFORMER, ["tokenizer.shared=false"])],
                         ids=["transformer", "t5", "separate-tokenizers"])
def test_train_generate_eval_on_the_command_line(tmp_path, capsys, model, overrides):
    code, out, data = train(tmp_path, *overrides, model=model)
    assert code == 0 and (out / "best" / "tokenizer.json").exists()
    if "tokenizer.shared=false" in overrides:
        assert (out / "best" / "target_tokenizer.json").exists()
    capsys.readouterr()
    assert main(["generate", str(out), "--prompt", "123", "--prompt", "45", "--beams", "3", "--n-best", "2",
                 "--max-new-tokens", "8"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["source"] for r in rows] == ["123", "45"] and all(len(r["outputs"]) == 2 for r in rows)
    assert rows[0]["outputs"][0]["score"] >= rows[0]["outputs"][1]["score"]
    assert main(["eval", str(out), "--data", str(data), "--max-new-tokens", "8"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["pairs"] == 40 and {"bleu", "chrf", "rouge1", "rouge2", "rougeL", "exact_match"} <= set(metrics)


def test_command_line_errors(tmp_path, capsys):
    long = tmp_path / "long.tsv"
    long.write_text("1\t1\n" * 10 + "1" * 40 + "\t1\n")
    code, _, _ = train(tmp_path, f"data.train={long}", "model.max_positions=16")
    assert code == 2 and "pair 11: the source has 41 tokens (with </s>) but the model allows 16" in capsys.readouterr().err
    code, out, _ = train(tmp_path, steps=1)
    assert code == 0
    capsys.readouterr()
    assert main(["generate", str(out), "--prompt", "1" * 200]) == 2
    assert "longer than this model allows (128)" in capsys.readouterr().err
    assert main(["generate", str(out), "--prompt", "1", "--n-best", "2"]) == 2
    assert "--n-best needs beam search" in capsys.readouterr().err
    (tmp_path / "empty.tsv").write_text("")
    result = subprocess.run([sys.executable, "-m", "attnlab.cli", "eval", str(out), "--data", str(tmp_path / "empty.tsv")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "holds no pairs" in result.stderr and "Traceback" not in result.stderr


def test_gpt_generate_is_unchanged_and_refuses_beams(tmp_path, capsys):
    from attnlab.checkpoint import save_checkpoint
    from attnlab.models import build_model, preset
    from attnlab.tokenizers import CharTokenizer

    tokenizer = CharTokenizer.train("abcdefgh ")
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "gpt", build_model(preset("gpt2-nano", vocab_size=tokenizer.vocab_size, n_layer=1)),
                    tokenizer)
    assert main(["generate", str(tmp_path / "gpt"), "--prompt", "abc", "--max-new-tokens", "5", "--seed", "1"]) == 0
    assert len(capsys.readouterr().out.strip()) == 3 + 5
    assert main(["generate", str(tmp_path / "gpt"), "--prompt", "abc", "--beams", "2"]) == 2
    assert "encoder-decoder" in capsys.readouterr().err


def test_t5_span_corruption_pretraining_on_the_command_line(tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog.\n" * 40)  # newlines are text too
    code = main(["train", "task=span_corruption", f"data.path={text}", "data.window=24", "data.sentinels=8",
                 "model.d_model=32", "model.d_kv=8", "model.d_ff=64", "model.n_layer=1", "model.n_head=2",
                 "train.max_steps=2", "train.eval_interval=2", "train.eval_batches=1", "train.batch_size=4",
                 "train.progress=false", "--out", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert json.loads(out)["best_val_loss"] < 10  # stdout holds the JSON alone
    config = json.loads((tmp_path / "run" / "best" / "config.json").read_text())
    assert config["family"] == "t5" and config["vocab_size"] == 3 + len(set(text.read_text())) + 8
