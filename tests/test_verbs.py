"""Every verb over the registry: a verb run on a checkpoint of a kind it does not serve refuses in
one line with exit code 2, and runs on the kinds it serves. Registering a family enrols it here."""

import argparse
import json
import socket

import numpy as np
import pytest
import torch

from attnlab.checkpoint import save_checkpoint
from attnlab.cli import build_parser, main, verb_modules
from attnlab.commands.serve import server_app
from attnlab.interop.registry import HF_SPECS
from attnlab.models.base import (CAUSAL_LM, CLASSIFIER, DUAL_ENCODER, ENCODER, FAMILIES, GRAPH, KINDS, SEQ2SEQ,
                                 build_model, preset)
from attnlab.tokenizers import SubwordTokenizer

from .test_families import graph_file, pairs_folder

SPECS = [FAMILIES[name] for name in sorted(FAMILIES)]
EVERY_KIND = set(KINDS)
# The kinds of checkpoint each verb that takes one serves (convert: the families with a Hugging Face spec).
SERVES = {"generate": {CAUSAL_LM, SEQ2SEQ}, "eval": EVERY_KIND, "embed": {ENCODER, DUAL_ENCODER},
          "search": {ENCODER, DUAL_ENCODER}, "classify": {ENCODER, CLASSIFIER, GRAPH, DUAL_ENCODER}, "finetune": {ENCODER}, "compress": {ENCODER}, "serve": EVERY_KIND}
# Settings a tiny preset needs to export: Marian computes its sinusoids in halves, post-LN.
EXPORTABLE = {"transformer": {"position_layout": "halves", "prenorm": False}}
SENTENCES = ["the cat sat on the mat", "a dog ran in the park", "we like to read books",
             "the sun is bright today", "my friend plays the piano", "rain fell on the old roof"]


def applies(verb, spec) -> bool:
    return spec.name in HF_SPECS if verb == "convert" else spec.kind in SERVES[verb]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny checkpoint of every family (encoders with a WordPiece tokenizer, which embedding and
    masked-LM scoring need), a text file, a pairs file, a labelled file, and per classifier a labelled
    .npz of raw items its processor reads (a dual encoder's: images, and image-caption pairs)."""
    root = tmp_path_factory.mktemp("verbs")
    wordpiece = SubwordTokenizer.train_wordpiece("\n".join(SENTENCES * 20), vocab_size=64)
    for spec in SPECS:
        torch.manual_seed(0)
        model = build_model(preset(spec.tiny_preset, **EXPORTABLE.get(spec.name, {})))
        processor = wordpiece if spec.kind == ENCODER else spec.processor.example(model.config)
        save_checkpoint(root / spec.name, model, processor)
        if spec.kind == DUAL_ENCODER:
            pairs_folder(spec, root / f"{spec.name}-pairs")
        if spec.kind in (CLASSIFIER, DUAL_ENCODER):
            items = processor.example_items(4, np.random.default_rng(0))
            count = model.config.n_labels if spec.kind == CLASSIFIER else 2
            names = [f"LABEL_{i}" for i in range(count)]  # a model without id2label's names
            np.savez(root / f"{spec.name}.npz", x=items, y=np.arange(len(items)) % len(names), label_names=names)
    (root / "text.txt").write_text("\n".join(SENTENCES * 4) + "\n")
    (root / "pairs.tsv").write_text("".join(f"{s}\t{s[::-1]}\n" for s in SENTENCES))
    for spec in [s for s in SPECS if s.kind == GRAPH][:1]:  # a graph file for the graph kinds' eval
        graph_file(spec, root / "graph.npz")
    (root / "labelled.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{i % 2}\n" for i, s in
                                                                   enumerate(SENTENCES * 4)))
    return root


def argv(verb, spec, root, out, ckpt=None) -> list:
    """A small run of `verb` on the family's checkpoint (or `ckpt`), writing under `out`."""
    ckpt, text = ckpt or root / spec.name, root / "text.txt"
    data = root / {SEQ2SEQ: "pairs.tsv", CLASSIFIER: f"{spec.name}.npz", GRAPH: "graph.npz",
                   DUAL_ENCODER: f"{spec.name}-pairs"}.get(spec.kind, "text.txt")
    runs = {
        "generate": ["generate", ckpt, "--prompt", "the cat", "--max-new-tokens", 3, "--temperature", 0,
                     "--json"],
        "eval": ["eval", ckpt, "--data", data, "--max-new-tokens", 3],
        "embed": ["embed", text, "--model", ckpt, "--out", out / "vectors.npy"],
        "search": ["search", text, "a dog", "--model", ckpt, "--index", out / "index.npz", "--top-k", 2],
        "classify": ["classify", ckpt, "--input", data if spec.kind in (CLASSIFIER, GRAPH) else
                     root / f"{spec.name}.npz" if spec.kind == DUAL_ENCODER else root / "labelled.tsv"],
        "finetune": ["finetune", "--base", ckpt, "--train", root / "labelled.tsv", "--out", out / "classifier",
                     "--epochs", 1, "--batch-size", 8, "--max-length", 16],
        "compress": ["compress", ckpt, "--pipeline", "quantize:dynamic_int8", "--train", root / "labelled.tsv",
                     "--val", root / "labelled.tsv", "--out", out / "compressed", "--max-length", 16, "--repeats", 2],
        "convert": ["convert", "export", ckpt, out / "hf"],
    }
    return [str(a) for a in runs[verb]]


def run(capsys, args):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


REFUSALS = [(verb, spec) for verb in [*SERVES, "convert"] for spec in SPECS if not applies(verb, spec)]


@pytest.mark.parametrize("verb,spec", REFUSALS, ids=[f"{v}-{s.name}" for v, s in REFUSALS])
def test_a_verb_refuses_a_kind_it_does_not_serve_in_one_line(verb, spec, files, tmp_path, capsys):
    code, out, err = run(capsys, argv(verb, spec, files, tmp_path))
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith(f"attnlab {verb}: error: {verb} needs "), err
    assert f"holds a {spec.name} model" in err
    assert not any(tmp_path.iterdir())  # refused before writing anything


def test_the_refusal_names_what_the_verb_needs_and_what_the_checkpoint_is(files, tmp_path, capsys):
    code, _, err = run(capsys, argv("generate", FAMILIES["bert"], files, tmp_path))
    assert code == 2
    assert err == (f"attnlab generate: error: generate needs a causal language model or an encoder-decoder "
                   f"(sequence to sequence) model; {files / 'bert'} holds a bert model, a bidirectional encoder "
                   "(try embed, search, eval or classify)\n")


def test_convert_names_the_families_that_convert(files, tmp_path, capsys):
    unconvertible = [spec for spec in SPECS if spec.name not in HF_SPECS]
    for spec in unconvertible:
        code, _, err = run(capsys, argv("convert", spec, files, tmp_path))
        assert code == 2 and ", ".join(sorted(HF_SPECS)) in err


ACCEPTED = [(verb, spec) for verb in ("generate", "eval", "embed", "search", "convert", "classify") for spec in SPECS
            if applies(verb, spec) and (verb, spec.kind) != ("classify", ENCODER)]  # encoders: finetune first


@pytest.mark.parametrize("verb,spec", ACCEPTED, ids=[f"{v}-{s.name}" for v, s in ACCEPTED])
def test_a_verb_runs_on_the_kinds_it_serves(verb, spec, files, tmp_path, capsys):
    code, out, err = run(capsys, argv(verb, spec, files, tmp_path))
    assert code == 0, err
    if verb in ("generate", "eval"):
        assert isinstance(json.loads(out), dict)
    if verb == "classify":  # a line per input (per node of a graph), and the accuracy where labels are known
        lines = len(np.load(files / "graph.npz")["y"]) if spec.kind == GRAPH else 4
        assert len(out.splitlines()) == lines and "accuracy" in err
    if verb == "search":
        assert out.startswith("query: a dog")
    if verb == "embed":
        assert (tmp_path / "vectors.npy").is_file()
    if verb == "convert":
        assert (tmp_path / "hf" / "config.json").is_file()


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_serve_loads_every_kind(spec, files):
    app = server_app(build_parser().parse_args(["serve", str(files / spec.name), "--port", str(free_port())]))
    assert app.title


ENCODERS = [spec for spec in SPECS if spec.kind == ENCODER]


@pytest.mark.parametrize("spec", ENCODERS, ids=[s.name for s in ENCODERS])
def test_an_encoder_finetunes_then_classifies_and_compresses(spec, files, tmp_path, capsys):
    """A plain encoder is not yet a classifier; finetune makes one where the family has a
    classification head (the others refuse in one line), and classify and compress take it."""
    code, _, err = run(capsys, argv("classify", spec, files, tmp_path))
    assert code == 2 and "is not a classifier checkpoint" in err and len(err.splitlines()) == 1
    code, _, err = run(capsys, argv("finetune", spec, files, tmp_path))
    if code == 2:
        assert "has no sequence-classification head" in err or "have no sequence-classification head" in err, err
        assert len(err.splitlines()) == 1
        return
    assert code == 0, err
    classifier = tmp_path / "classifier"
    code, out, err = run(capsys, argv("classify", spec, files, tmp_path, classifier))
    assert code == 0 and len(out.splitlines()) == len(SENTENCES * 4) and "accuracy" in err, err
    code, out, err = run(capsys, argv("compress", spec, files, tmp_path, classifier))
    assert code == 0 and (tmp_path / "compressed" / "model" / "config.json").is_file(), err


@pytest.mark.parametrize("verb", ["generate", "eval"])
def test_a_bidirectional_reformer_neither_generates_nor_scores_perplexity(verb, files, tmp_path, capsys):
    config = preset(FAMILIES["reformer"].tiny_preset, causal=False)
    model = build_model(config)
    assert not model.generates
    save_checkpoint(tmp_path / "reformer", model, FAMILIES["reformer"].processor.example(config))
    code, out, err = run(capsys, [verb, str(tmp_path / "reformer"), "--prompt" if verb == "generate" else "--data",
                                  "the cat" if verb == "generate" else str(files / "text.txt")])
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert "predicts the next token" in err and "bidirectional" in err


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_a_model_generates_only_when_it_is_a_causal_lm_or_seq2seq(spec):
    assert build_model(preset(spec.tiny_preset)).generates == (spec.kind in (CAUSAL_LM, SEQ2SEQ))


def test_every_verb_module_registers_exactly_one_verb():
    verbs = []
    for module in verb_modules():
        sub = argparse.ArgumentParser().add_subparsers()
        module.register(sub)
        assert len(sub.choices) == 1, module.__name__
        verbs += list(sub.choices)
    assert sorted(verbs) == ["classify", "compress", "convert", "curate", "demo", "doctor", "embed", "eval",
                             "finetune", "generate", "search", "serve", "train"]


def free_port() -> int:
    """A port nothing listens on (serve checks it can bind before it loads anything)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def verb_parsers() -> dict:
    return next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices


def minimal_argv(verb) -> list:
    """The verb with a placeholder for each argument it requires, so that parsing succeeds."""
    actions = verb_parsers()[verb]._actions
    positional = [a for a in actions if not a.option_strings and a.nargs not in ("*", "?")]
    options = [a.option_strings[0] for a in actions if a.option_strings and a.required]
    return [verb, *[a.choices[0] if a.choices else "x" for a in positional],
            *[x for option in options for x in (option, "x")]]


@pytest.mark.parametrize("verb", sorted(verb_parsers()))
def test_every_verb_takes_threads_and_refuses_a_non_positive_count(verb, capsys):
    assert "--threads" in verb_parsers()[verb].format_help()
    assert main([*minimal_argv(verb), "--threads", "0"]) == 2
    assert "--threads must be a positive integer" in capsys.readouterr().err


def test_threads_set_torchs_thread_count_before_the_verb_runs(tmp_path, capsys):
    previous = torch.get_num_threads()
    try:
        assert main(["embed", str(tmp_path / "missing"), "--threads", "2"]) == 2  # no checkpoint: after the threads
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
