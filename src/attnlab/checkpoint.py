"""Checkpoints: a directory with config.json, model.safetensors, the tokenizer and, for
training, trainer.pt.

A checkpoint is written whole into a temporary sibling directory and swapped in with
renames, so a crash or kill at any moment leaves either the previous checkpoint or the new
one, never a half-written mix. Nothing is unpickled except trainer.pt, with weights_only=True.
"""

import json
import os
import shutil
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .compression.structure import STRUCTURE_FILE, apply_structure, describe_structure
from .errors import UserError
from .models.base import build_model, config_from_dict, family_spec

CONFIG_FILE = "config.json"
LEGACY_LABELS_FILE = "labels.json"  # a classifier's label names before they moved into config.json (id2label)
WEIGHTS_FILE = "model.safetensors"
TRAINER_FILE = "trainer.pt"


def save_checkpoint(directory, model, tokenizer=None, trainer_state=None, extra_json=None):
    """Write the checkpoint atomically; `extra_json` maps file names to JSON-able data."""
    final = Path(directory)
    final.parent.mkdir(parents=True, exist_ok=True)
    _recover(final)
    for stale in final.parent.glob(f"{final.name}.tmp-*"):  # left by a writer that was killed
        shutil.rmtree(stale)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    tmp.mkdir()
    model.config.save(tmp / CONFIG_FILE)
    structure = describe_structure(model)  # pruned shapes, quantised layers, LoRA: see compression/
    if structure:
        (tmp / STRUCTURE_FILE).write_text(json.dumps(structure, indent=2))
    save_file(weights_for_saving(model), tmp / WEIGHTS_FILE, metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save(tmp)
    if trainer_state is not None:
        torch.save(trainer_state, tmp / TRAINER_FILE)
    for name, data in (extra_json or {}).items():
        (tmp / name).write_text(json.dumps(data, indent=2))
    _fsync_tree(tmp)
    swap_in(tmp, final)


def weights_for_saving(model) -> dict:
    """The state dict with tied tensors stored once (under the first name)."""
    weights, seen = {}, set()
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tensor.shape, tensor.stride()) if tensor.numel() else None
        if key in seen:
            continue
        if key is not None:
            seen.add(key)
        weights[name] = tensor.contiguous()
    return weights


def resolve_checkpoint(path) -> Path:
    """A checkpoint directory, or a run directory (its best/, else last/)."""
    path = Path(path)
    if (path / CONFIG_FILE).exists():
        return path
    for name in ("best", "last"):
        if (path / name / CONFIG_FILE).exists():
            return path / name
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    raise UserError(f"{path} is neither a checkpoint (no {CONFIG_FILE}) nor a run directory with best/ or last/")


def load_checkpoint(directory, families=None, device="cpu", with_tokenizer=True):
    """-> (model in eval mode, its processor or None): the processor its family's spec names (a
    tokenizer, or the source and target tokenizers of a seq2seq model). `families` limits which
    models are accepted."""
    directory = Path(directory)
    _recover(directory)
    config = read_config(directory)
    if families is not None and config.family not in families:
        raise UserError(f"{directory} holds a {config.family} model; this command needs {' or '.join(families)}")
    model = build_model(config)
    if (directory / STRUCTURE_FILE).is_file():
        apply_structure(model, read_json(directory / STRUCTURE_FILE))
    load_weights(model, directory / WEIGHTS_FILE)
    return model.to(device).eval(), load_processor(directory, config) if with_tokenizer else None


def load_processor(directory, config=None):
    """The checkpoint's processor (a tokenizer, or a seq2seq model's pair of them), or None if it has
    none; the model is not built."""
    processor = family_spec(config or read_config(directory)).processor
    return processor.load(Path(directory)) if processor.exists(Path(directory)) else None


def read_config(directory):
    path = Path(directory) / CONFIG_FILE
    if not Path(directory).is_dir():
        raise UserError(f"checkpoint directory {directory} does not exist")
    if not path.is_file():
        raise UserError(f"{directory} is not a checkpoint: it has no {CONFIG_FILE}")
    values = read_json(path)
    legacy = Path(directory) / LEGACY_LABELS_FILE
    if "id2label" not in values and legacy.is_file():
        values["id2label"] = {str(i): name for i, name in enumerate(read_json(legacy)["labels"])}
    return config_from_dict(values)


def read_json(path) -> dict:
    try:
        values = json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}); the checkpoint is corrupt") from None
    if not isinstance(values, dict):
        raise UserError(f"{path} must hold a JSON object; the checkpoint is corrupt")
    return values


def load_weights(model, path):
    """Load safetensors weights into `model`; missing, unexpected or mis-shaped tensors are
    named in one error."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path.parent} has no {path.name}")
    try:
        weights = load_file(path)
    except (SafetensorError, OSError) as err:
        raise UserError(f"{path} is not a readable safetensors file ({err}); the checkpoint is corrupt") from None
    check_weights(model, weights, source=str(path))
    model.load_state_dict(weights, strict=False)


def check_weights(model, weights: dict, source: str):
    expected = weights_for_saving(model)
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(model.state_dict()))
    misshaped = sorted(f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}"
                       for k, v in expected.items() if k in weights and weights[k].shape != v.shape)
    problems = [f"{label}: {', '.join(items[:8])}{' ...' if len(items) > 8 else ''}"
                for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape (file vs model)", misshaped))
                if items]
    if problems:
        raise UserError(f"{source} does not fit the {model.config.family} model: {'; '.join(problems)}")


def load_trainer_state(directory):
    path = Path(directory) / TRAINER_FILE
    if not path.is_file():
        raise UserError(f"{directory} has no {TRAINER_FILE}: it cannot be resumed from")
    try:
        with warnings.catch_warnings():  # torch warns about a foreign pickle before refusing it; the refusal says enough
            warnings.simplefilter("ignore")
            return torch.load(path, weights_only=True)
    except Exception:  # torch raises several types for a damaged file; its advice to unpickle it is not ours
        raise UserError(f"{path} is not a plain tensor file (damaged, or holding other objects); it will not be "
                        "loaded: resume from another checkpoint or start a new run") from None


def swap_in(tmp: Path, final: Path):
    """Put directory `tmp` where `final` is, replacing it whole (an interrupted swap is undone by _recover)."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.rename(final, old)
    os.rename(tmp, final)  # between these renames only `old` exists; _recover puts it back
    shutil.rmtree(old, ignore_errors=True)


def _recover(final: Path):
    """Undo a swap interrupted between its two renames."""
    old = final.with_name(final.name + ".old")
    if not final.exists() and old.exists():
        os.rename(old, final)


def _fsync_tree(directory: Path):
    for path in directory.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
