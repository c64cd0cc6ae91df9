"""Seq2seq pairs, batches, the seq2seq training task and the generate/eval verbs; bad inputs
get one clear error (exit code 2)."""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from attnlab.cli import build_parser, main
from attnlab.commands.generate import decoding
from attnlab.data.seq2seq import Seq2SeqBatches, collate, holdout, read_pairs
from attnlab.errors import UserError
from attnlab.inference import BeamSearch
from attnlab.training.tasks import resolve_run, setup_task

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


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
    assert read_pairs(tmp_path / "p.tsv") == [(1, "ein Haus", "a house"), (3, "zwei", "two")]  # line 2 is blank
    assert read_pairs(tmp_path / "p.jsonl") == [(1, "ein Haus", "a house"), (2, "zwei", "two")]


def test_a_utf8_byte_order_mark_is_not_data(tmp_path):
    (tmp_path / "p.tsv").write_text("\ufeffein Haus\ta house\nzwei\ttwo\n", encoding="utf-8")
    (tmp_path / "p.jsonl").write_text('\ufeff{"source": "ein Haus", "target": "a house"}\n', encoding="utf-8")
    assert read_pairs(tmp_path / "p.tsv")[0] == read_pairs(tmp_path / "p.jsonl")[0] == (1, "ein Haus", "a house")


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



def test_lines_that_are_not_pairs_are_counted_and_named_or_skipped_on_request(tmp_path):
    lines = [f"quelle {i}\tziel {i}" for i in range(20)]
    for number in (3, 8, 12, 15, 17, 19, 20):  # a stray tab in seven lines
        lines[number - 1] += "\tstray"
    (tmp_path / "p.tsv").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"7 of 20 lines are not pairs \(lines 3, 8, 12, 15, 17, \.\.\.; line 3: "
                                        r"expected 2 tab-separated columns .* found 3\).*data.bad_lines=skip"):
        read_pairs(tmp_path / "p.tsv")
    said = []
    pairs = read_pairs(tmp_path / "p.tsv", bad_lines="skip", log=said.append)
    assert [n for n, _, _ in pairs] == [n for n in range(1, 21) if n not in (3, 8, 12, 15, 17, 19, 20)]
    assert pairs[0] == (1, "quelle 0", "ziel 0")
    assert len(said) == 1 and said[0].startswith("skipped ") and "7 of 20 lines" in said[0]

def test_batches_are_padded_to_their_longest_pair():
    pairs = [([5] * n + [1], [6] * (n % 4 + 1) + [1]) for n in range(1, 60)]
    batch = collate(pairs[:3])
    assert batch.inputs["input_ids"].tolist() == [[5, 1, 0, 0], [5, 5, 1, 0], [5, 5, 5, 1]]
    assert batch.inputs["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch.inputs["labels"][0].tolist() == [6, 6, 1, -100, -100]
    assert batch.examples == 3 and batch.row_tokens.tolist() == [2 + 3, 3 + 4, 4 + 5]  # source + target, no padding
    assert batch.rows(1, 3).tokens == 7 + 9 and batch.rows(1, 3).inputs["labels"].shape == (2, 5)


def test_every_pair_is_drawn_equally_often_in_batches_of_similar_length():
    pairs = [([5] * n + [1], [6] * (n % 4 + 1) + [1]) for n in range(1, 60)]  # source length n + 1 names the pair
    batches = Seq2SeqBatches({"train": pairs}, batch_size=8)
    generator = torch.Generator().manual_seed(0)
    counts, wrapped = Counter(), 0
    for _ in range(4000):
        lengths = batches.sample("train", generator).inputs["attention_mask"].sum(1)
        assert len(lengths) == 8
        wrapped += int(lengths.max() - lengths.min() > 7)  # only a window over the end mixes lengths
        counts.update(lengths.tolist())
    assert wrapped < 4000 * 2 * 7 / len(pairs)  # 7 of the 59 windows wrap
    mean = sum(counts.values()) / len(pairs)  # about 480 draws each, standard deviation about 21
    assert len(counts) == len(pairs)
    # a uniform window start draws the first and last pairs 8 times less often than the middle ones
    for n in (2, 3, 30, 59, 60):
        assert abs(counts[n] - mean) < 0.2 * mean, (n, counts[n], mean)


def test_a_split_smaller_than_a_batch_is_one_batch():
    pairs = [([5] * n + [1], [6, 1]) for n in range(1, 4)]
    batch = Seq2SeqBatches({"val": pairs}, batch_size=8).sample("val", torch.Generator().manual_seed(0))
    assert sorted(batch.inputs["attention_mask"].sum(1).tolist()) == [2, 3, 4]


def test_holdout_is_a_seeded_shuffle_not_the_tail():
    items = list(range(100))
    train, val = holdout(items, 0.1, seed=1)
    assert len(val) == 10 and sorted(train + val) == items
    assert val != items[-10:] and max(val) - min(val) > 20  # spread over the file, not its sorted tail
    assert holdout(items, 0.1, seed=1) == (train, val)
    assert holdout(items, 0.1, seed=2)[1] != val


def test_validation_split_of_a_sorted_file_is_seeded_and_unbiased(tmp_path):
    data = tmp_path / "sorted.tsv"  # pairs sorted by length: the old split held out the 4 longest
    data.write_text("".join(f"{'7' * n}\t{'7' * n}\n" for n in range(1, 41)))

    def val_lengths(seed):
        run = {"task": "seq2seq", "data": {"train": str(data)}, "model": {"preset": "transformer-tiny"},
               "train": {"seed": seed}}
        _, _, batches = setup_task(resolve_run(run), tmp_path / "run", resume=False)
        assert len(batches.splits["train"]) == 36
        return sorted(len(source) - 1 for source, _ in batches.splits["val"])

    lengths = val_lengths(1337)
    assert len(lengths) == 4 and lengths != [37, 38, 39, 40]
    assert val_lengths(1337) == lengths  # the same seed (as on --resume) gives the same split
    assert val_lengths(7) != lengths


TINY_TRANSFORMER = ["model.preset=transformer-tiny", "model.d_model=32", "model.ffn_hidden=64",
                    "model.n_encoder_layer=1", "model.n_decoder_layer=1"]
TINY_T5 = ["model.preset=t5-tiny", "model.d_model=32", "model.ffn_hidden=64", "model.head_dim=8", "model.n_layer=1"]


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
    long.write_text("1\t1\n\n" * 10 + "1" * 40 + "\t1\n")  # pair 11 on line 21
    code, _, _ = train(tmp_path, f"data.train={long}", "model.max_positions=16")
    err = capsys.readouterr().err
    assert code == 2 and f"{long} line 21: the source has 41 tokens (with </s>) but the model allows 16" in err
    assert "(model.max_positions)" in err
    code, out, _ = train(tmp_path, steps=1)
    assert code == 0
    capsys.readouterr()
    assert main(["generate", str(out), "--prompt", "1" * 200]) == 2
    assert "longer than this model allows (128)" in capsys.readouterr().err
    assert main(["generate", str(out), "--prompt", "1", "--n-best", "2"]) == 2
    assert "--n-best needs beam search" in capsys.readouterr().err
    for beams in ("0", "-3"):
        assert main(["generate", str(out), "--prompt", "1", "--beams", beams]) == 2
        assert f"--beams must be at least 1 (1: greedy or sampling, N > 1: beam search), got {beams}" in \
            capsys.readouterr().err
    assert main(["eval", str(out), "--data", str(long), "--beams", "0"]) == 2
    assert "--beams must be at least 1" in capsys.readouterr().err
    assert main(["generate", str(out), "--prompt", "1", "--n-best", "3", "--beams", "2"]) == 2
    err = capsys.readouterr().err
    assert "--n-best (3) cannot be more than --beams (2)" in err and "num_return" not in err
    assert main(["generate", str(out), "--prompt", "1", "--early-stopping", "never"]) == 2
    assert "--early-stopping is for beam search" in capsys.readouterr().err
    too_long = tmp_path / "too_long.tsv"
    too_long.write_text("12\t21\n\n" + "1" * 200 + "\t1\n")
    assert main(["eval", str(out), "--data", str(too_long)]) == 2
    assert f"{too_long} line 3: the source has 201 tokens (with </s>) but the model allows 128" in \
        capsys.readouterr().err
    (tmp_path / "empty.tsv").write_text("")
    result = subprocess.run([sys.executable, "-m", "attnlab.cli", "eval", str(out), "--data", str(tmp_path / "empty.tsv")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "holds no pairs" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("side,line,field", [("source", "1" * 40 + "\t1", "max_seq_len"),
                                             ("target", "1\t" + "1" * 40, "max_target_len")])
def test_t5_length_errors_name_t5_fields(tmp_path, capsys, side, line, field):
    long = tmp_path / "long.tsv"
    long.write_text("1\t1\n" + line + "\n")
    code, _, _ = train(tmp_path, f"data.train={long}", f"model.{field}=16", model=TINY_T5)
    err = capsys.readouterr().err
    assert code == 2 and f"{long} line 2: the {side} has 41 tokens" in err
    assert f"(model.{field})" in err and "max_positions" not in err


@pytest.mark.parametrize("flag,expected", [(None, False), ("true", True), ("false", False), ("never", "never")])
def test_early_stopping_flag_reaches_beam_search(flag, expected):
    from attnlab.models import build_model, preset

    argv = ["generate", "ckpt", "--beams", "3"] + (["--early-stopping", flag] if flag else [])
    options = decoding(build_parser().parse_args(argv), build_model(preset("transformer-tiny")))
    assert isinstance(options, BeamSearch) and options.early_stopping is expected and options.num_beams == 3


def test_example_config_trains_then_generates_and_evaluates(tmp_path, capsys):
    data = write_pairs(tmp_path / "reverse.tsv", n=60)
    out = tmp_path / "run"
    code = main(["train", "--config", str(CONFIGS / "digits_reverse_seq2seq.yaml"), "--data", str(data),
                 "--out", str(out), "train.max_steps=3", "train.eval_interval=3", "train.eval_batches=1",
                 "train.progress=false"])
    assert code == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["best_val_loss"] < 10
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["family"] == "transformer" and config["max_positions"] == 16
    assert main(["generate", str(out), "--prompt", "123", "--prompt", "4056", "--beams", "2",
                 "--max-new-tokens", "8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(set(line) <= set("0123456789") and len(line) <= 8 for line in lines)
    assert main(["eval", str(out), "--data", str(data), "--beams", "2", "--early-stopping", "true"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["pairs"] == 60 and 0 <= metrics["bleu"] <= 100 and 0 <= metrics["exact_match"] <= 1


def test_gpt_generate_is_unchanged_and_beam_searches(tmp_path, capsys):
    from attnlab.checkpoint import save_checkpoint
    from attnlab.models import build_model, preset
    from attnlab.tokenizers import CharTokenizer

    tokenizer = CharTokenizer.train("abcdefgh ")
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "gpt", build_model(preset("gpt2-nano", vocab_size=tokenizer.vocab_size, n_layer=1)),
                    tokenizer)
    assert main(["generate", str(tmp_path / "gpt"), "--prompt", "abc", "--max-new-tokens", "5", "--seed", "1"]) == 0
    assert len(capsys.readouterr().out.strip()) == 3 + 5
    assert main(["generate", str(tmp_path / "gpt"), "--prompt", "abc", "--beams", "2", "--n-best", "2",
                 "--max-new-tokens", "5"]) == 0
    outputs = json.loads(capsys.readouterr().out)["outputs"]
    assert len(outputs) == 2 and all(len(o["text"]) == 5 for o in outputs)
    assert outputs[0]["score"] >= outputs[1]["score"]
    assert main(["generate", str(tmp_path / "gpt"), "--prompt", "abc", "--beams", "2", "--temperature", "0.8"]) == 2
    assert "beam search is deterministic" in capsys.readouterr().err


def test_t5_span_corruption_pretraining_on_the_command_line(tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog.\n" * 40)  # newlines are text too
    code = main(["train", "task=span_corruption", f"data.path={text}", "data.window=24", "data.sentinels=8",
                 "model.d_model=32", "model.head_dim=8", "model.ffn_hidden=64", "model.n_layer=1", "model.n_head=2",
                 "train.max_steps=2", "train.eval_interval=2", "train.eval_batches=1", "train.batch_size=4",
                 "train.progress=false", "--out", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert json.loads(out)["best_val_loss"] < 10  # stdout holds the JSON alone
    config = json.loads((tmp_path / "run" / "best" / "config.json").read_text())
    assert config["family"] == "t5" and config["vocab_size"] == 3 + len(set(text.read_text())) + 8


def test_training_skips_bad_lines_when_told_and_says_how_many(tmp_path, capsys):
    data = write_pairs(tmp_path / "rev.tsv")
    with data.open("a") as f:
        f.write("one\ttoo\tmany\n")
    base = ["train", "task=seq2seq", f"data.train={data}", *TINY_TRANSFORMER, "train.max_steps=1",
            "train.eval_interval=1", "train.eval_batches=1", "train.batch_size=8", "train.progress=false"]
    assert main([*base, "--out", str(tmp_path / "strict")]) == 2
    assert "1 of" in capsys.readouterr().err and not (tmp_path / "strict" / "best").exists()
    assert main([*base, "data.bad_lines=skip", "--out", str(tmp_path / "lenient")]) == 0
    assert "skipped" in capsys.readouterr().err and (tmp_path / "lenient" / "best").exists()
    assert main([*base, "data.bad_lines=maybe", "--out", str(tmp_path / "typo")]) == 2
    assert "bad_lines" in capsys.readouterr().err
