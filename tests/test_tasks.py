"""The run config's sections, checked before anything is built, and the one batch size."""

import dataclasses
from pathlib import Path

import pytest
import torch

from attnlab.commands.common import load_run_config
from attnlab.errors import UserError
from attnlab.training.tasks import TASKS, resolve_run, setup_task



def test_every_task_section_rejects_an_unknown_key_naming_the_known_ones():
    for name, task in TASKS.items():
        for section, kind in (("data", task.data), ("tokenizer", task.tokenizer)):
            known = ", ".join(sorted(f.name for f in dataclasses.fields(kind)))
            with pytest.raises(UserError) as error:
                resolve_run({"task": name, section: {"bogus": 1}})
            assert str(error.value) == f"{section} config: unknown field(s) bogus; known fields are {known}", name


def test_sections_are_typed_and_the_model_section_is_passed_on():
    run = resolve_run({"task": "mlm", "data": {"path": "x.txt", "nsp": True, "seq_len": 24},
                       "model": {"preset": "bert-tiny", "n_layer": 1}})
    assert (run.task.name, run.data.nsp, run.data.seq_len, run.data.mask_prob) == ("mlm", True, 24, 0.15)
    assert run.tokenizer.kind == "wordpiece" and run.model == {"preset": "bert-tiny", "n_layer": 1}
    with pytest.raises(UserError, match="window must be a positive integer"):
        resolve_run({"task": "span_corruption", "data": {"window": 0}})
    with pytest.raises(UserError, match="the data section must be a mapping"):
        resolve_run({"data": "corpus.txt"})
    assert resolve_run({"data": None}).data.path is None  # an empty YAML section


@pytest.mark.parametrize("task, train, expected", [("lm", {}, 12), ("mlm", {}, 12), ("seq2seq", {}, 32),
                                                   ("span_corruption", {}, 32), ("seq2seq", {"batch_size": 5}, 5),
                                                   ("lm", {"batch_size": 7}, 7)])
def test_one_batch_size_train_or_the_task_default(task, train, expected):
    assert resolve_run({"task": task, "train": train}).train.batch_size == expected


def test_the_lm_batch_source_reads_the_resolved_batch_size(tiny_text, tmp_path):
    run = resolve_run({"data": {"path": str(tiny_text)}, "model": {"n_layer": 1, "n_head": 2, "d_model": 32,
                                                                  "max_seq_len": 16}})
    _, _, batches = setup_task(run, tmp_path / "run", resume=False)
    batch = batches.sample("train", torch.Generator().manual_seed(0))
    assert batches.batch_size == batch.examples == 12 and batch.tokens == 12 * 16


def test_the_seq2seq_batch_source_reads_the_resolved_batch_size_and_counts_real_tokens(tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"{'1' * (n % 9 + 1)}\t{'2' * (n % 5 + 1)}\n" for n in range(80)))
    run = resolve_run({"task": "seq2seq", "data": {"train": str(pairs)}, "model": {"preset": "transformer-tiny"}})
    _, _, batches = setup_task(run, tmp_path / "run", resume=False)
    batch = batches.sample("train", torch.Generator().manual_seed(0))
    assert batches.batch_size == batch.examples == 32
    real = batch.inputs["attention_mask"].sum() + (batch.inputs["labels"] != -100).sum()
    assert batch.tokens == real < batch.inputs["input_ids"].numel() + batch.inputs["labels"].numel()  # padding excluded


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_the_example_configs_resolve(path):
    run = resolve_run(load_run_config(path))
    assert run.task.name in TASKS and run.train.max_steps > 0
