"""What the verbs share: run configs from YAML/JSON with key=value overrides, checkpoint paths
that may name a run directory, the one place a verb learns what a checkpoint is, and the one
check of an output directory before a verb writes into it."""

import contextlib
import json
import os
import shutil
from pathlib import Path

import yaml

from ..checkpoint import read_config, resolve_checkpoint, swap_in
from ..errors import UserError
from ..models.base import CAUSAL_LM, CLASSIFIER, DUAL_ENCODER, ENCODER, GRAPH, KINDS, SEQ2SEQ, family_spec

# The verbs to suggest when a verb refuses a checkpoint of a kind.
VERBS_FOR = {CAUSAL_LM: "generate or eval", SEQ2SEQ: "generate or eval", ENCODER: "embed, search, eval or classify",
             CLASSIFIER: "classify, eval or serve", GRAPH: "eval or classify",
             DUAL_ENCODER: "classify --labels, embed, search, eval or serve"}


def load_run_config(path=None, overrides=()) -> dict:
    """YAML or JSON file (or nothing) + overrides like `train.lr=3e-4` -> nested dict."""
    run = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file {path} does not exist")
        try:
            run = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise UserError(f"config file {path} is not valid YAML/JSON: {yaml_problem(err)}") from None
        if not isinstance(run, dict):
            raise UserError(f"config file {path} must hold a mapping of sections (model, data, train, ...)")
    for item in overrides:
        apply_override(run, item)
    return run


def run_config_arguments(p):
    """The arguments of a verb that reads a run config (train, doctor): overrides, --config, --data, --preset."""
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="e.g. train.lr=3e-4 model.n_layer=2")
    p.add_argument("--config", help="YAML or JSON run config (sections: task, model, tokenizer, data, train)")
    p.add_argument("--data", help="text file or folder (sets data.path); for task seq2seq the training pairs file")
    p.add_argument("--preset", help="model preset (sets model.preset)")


def run_overrides(args) -> list:
    """The key=value overrides of a verb that reads a run config, with what --data and --preset set."""
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.path={args.data}")
    if args.preset:
        overrides.append(f"model.preset={args.preset}")
    return overrides


def yaml_problem(err: yaml.YAMLError) -> str:
    """The parser's complaint and where, on one line."""
    if not isinstance(err, yaml.MarkedYAMLError) or err.problem_mark is None:
        return str(err).replace("\n", " ")
    return f"{err.problem} at line {err.problem_mark.line + 1}, column {err.problem_mark.column + 1}"


def apply_override(run: dict, item: str):
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise UserError(f"override {item!r} must look like section.key=value, e.g. train.lr=3e-4")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    *parents, leaf = key.split(".")
    node = run
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"override {item!r}: {part} is not a section")
    node[leaf] = value


def output_dir(path) -> Path:
    """An --out path as a Path, or one line when no directory can be written there."""
    path = Path(path)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"cannot write to {path}: {existing} is a file, not a directory; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to {path}: {existing} is not writable; choose another path")
    return path


def for_kind(verb, checkpoint, runners: dict):
    """-> (the runner that `runners` (kind -> function) gives the checkpoint's kind, its resolved
    path), or one line naming what `verb` needs and what the checkpoint holds."""
    path = resolve_checkpoint(checkpoint)
    config = read_config(path)
    kind = family_spec(config).kind
    if kind not in runners:
        needs = " or ".join(KINDS[k] for k in runners)
        raise UserError(f"{verb} needs {needs}; {checkpoint} holds a {config.family} model, {KINDS[kind]} "
                        f"(try {VERBS_FOR[kind]})")
    return runners[kind], path


def refuse_bidirectional(verb, checkpoint, model):
    """generate and perplexity read a model left to right; one whose config made it bidirectional cannot."""
    if not model.generates:
        raise UserError(f"{verb} needs a model that predicts the next token; {checkpoint} holds a "
                        f"{model.config.family} model configured bidirectional (causal=false)")


# Written into every output directory a verb creates, so that the verb knows its own earlier output.
OUTPUT_MARKER = "attnlab-output.json"
FORCE_HELP = ("replace --out even when it holds files attnlab did not write there (the whole directory is "
              "replaced, atomically, once the new output is complete)")


def claim_output(out, verb: str, force: bool = False) -> bool:
    """May `verb` write into directory `out`? Yes when it is absent or empty (-> False), or holds
    `verb`'s own earlier output or `force` is given (-> True: it has contents to replace); else
    one line naming --force and another path. Nothing is written."""
    out = output_dir(out)
    if not out.exists() or not any(out.iterdir()):
        return False
    if force or output_verb(out) == verb:
        return True
    raise UserError(f"--out {out} is not empty and is not an earlier `attnlab {verb}` output; choose another "
                    f"path, or pass --force to replace it")


def output_verb(out: Path):
    """The verb whose marker `out` holds, or None."""
    try:
        return json.loads((out / OUTPUT_MARKER).read_text()).get("verb")
    except (OSError, ValueError, AttributeError):
        return None


def mark_output(out, verb: str):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / OUTPUT_MARKER).write_text(json.dumps({"verb": verb}) + "\n")


@contextlib.contextmanager
def fresh_output(out, verb: str, force: bool = False):
    """Yields the directory to write `verb`'s output into: `out` itself when it is absent or
    empty; when it holds earlier output (see claim_output), a new sibling directory that replaces
    `out` as a whole only once the block has finished, so a failure leaves the earlier output
    untouched (and removes only the sibling)."""
    out = Path(out)
    replacing = claim_output(out, verb, force)
    work = out.with_name(f"{out.name}.tmp-{os.getpid()}") if replacing else out
    mark_output(work, verb)  # output left part-way is still recognised as this verb's
    try:
        yield work
    except BaseException:
        if replacing:
            shutil.rmtree(work, ignore_errors=True)
        raise
    mark_output(work, verb)  # again: a checkpoint saved as `work` itself replaced the directory
    if replacing:
        swap_in(work, out)


def print_json(data):
    print(json.dumps(data, indent=2))
