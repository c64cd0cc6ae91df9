"""The training doctor (training/doctor.py, `attnlab doctor`): each probe flags a broken set-up of
the bug zoo (benchmarks/doctor_zoo.py) and passes healthy ones; the verb's lines and exit codes."""

import json
import random

import pytest

from attnlab.cli import main
from attnlab.models.base import FAMILIES
from attnlab.training.doctor import PROBES, diagnose
from benchmarks.doctor_zoo import broken, family_setup, finetuned_classifier

BROKEN = broken()


def test_every_probe_has_a_broken_set_up_in_the_zoo():
    assert {case.expected for case in BROKEN} == set(PROBES)


@pytest.mark.parametrize("case", BROKEN, ids=[case.expected + ": " + case.name for case in BROKEN])
def test_the_probe_flags_its_broken_set_up(case):
    [finding] = diagnose(case.build(), [case.expected])
    assert not finding.healthy, finding.line()
    problem, fix = finding.line().split(": ", 1)[1].split("; ", 1)
    assert problem and fix and "\n" not in finding.line()


HEALTHY = {**{spec.name: lambda spec=spec: family_setup(spec) for spec in FAMILIES.values()},
           "encoder fine-tune": finetuned_classifier}


@pytest.mark.parametrize("name", sorted(HEALTHY))
def test_every_probe_passes_a_healthy_set_up(name):
    """Every registered family's tiny model on its example batches, and a fine-tuned classifier."""
    findings = diagnose(HEALTHY[name]())
    assert [f.probe for f in findings] == list(PROBES)
    assert all(f.healthy for f in findings), [f.line() for f in findings if not f.healthy]


def test_unknown_probe_is_refused():
    with pytest.raises(ValueError, match="unknown probe"):
        diagnose(finetuned_classifier(), ["no_such_probe"])


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    rng = random.Random(0)  # text without repeated passages: no overlap between its splits
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 7))) for _ in range(3000)]
    path.write_text(" ".join(words))
    return path


def test_the_verb_passes_a_healthy_run_config(corpus, capsys):
    probes = ["--probe", "initial_loss", "--probe", "causal", "--probe", "overlap"]
    assert main(["doctor", "--preset", "gpt-tiny", "--data", str(corpus), *probes, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["healthy"] and [f["probe"] for f in report["findings"]] == ["initial_loss", "causal", "overlap"]


def test_the_verb_reports_a_finding_in_one_line_and_exits_1(corpus, capsys):
    argv = ["doctor", "--preset", "gpt-tiny", "--data", str(corpus), "train.lr=1.0", "--probe", "learning_rate"]
    assert main(argv) == 1
    [line] = capsys.readouterr().out.splitlines()
    assert line.startswith("warning learning_rate: the loss rose") and "; " in line


def test_the_verb_refuses_a_bad_config_in_one_line(corpus, capsys):
    assert main(["doctor", "--preset", "no-such-preset", "--data", str(corpus)]) == 2
    assert "unknown preset" in capsys.readouterr().err
