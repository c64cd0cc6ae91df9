"""Key maps: how an attnlab state dict and a Hugging Face one name the same tensors.

A key map is a dict {our name: Hugging Face name}; a value may instead be a `Key` that also
carries the tensor transforms for each direction. Families describe themselves with a
`Family` record (config both ways, key map, Hugging Face keys that hold nothing new), and
`load_hf` / `save_hf` do the rest for every family alike.
"""

import dataclasses
import json
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from ..checkpoint import check_weights, weights_for_saving
from ..errors import UserError
from ..models.base import build_model


@dataclasses.dataclass(frozen=True)
class Key:
    hf: str
    from_hf: Callable = None  # HF tensor -> ours
    to_hf: Callable = None  # ours -> HF tensor


@dataclasses.dataclass(frozen=True)
class Family:
    model_type: str  # Hugging Face config.json "model_type"
    our_family: str
    config_from_hf: Callable  # HF config dict -> our config
    config_to_hf: Callable  # our config -> HF config dict
    key_map: Callable  # our config -> {our name: HF name or Key}
    redundant: Callable = lambda config: set()  # our config -> HF keys that repeat tied or fixed tensors


FAMILIES = {}  # HF model_type -> Family


def register_family(family: Family):
    FAMILIES[family.model_type] = family
    return family


def _key(entry) -> Key:
    return entry if isinstance(entry, Key) else Key(entry)


def import_weights(model, hf_weights: dict, key_map: dict, redundant=(), source="checkpoint"):
    """Load HF-named tensors into `model`; missing, unexpected or mis-shaped ones are named in one error."""
    ours, used = {}, set()
    for name, entry in key_map.items():
        key = _key(entry)
        if key.hf in hf_weights:
            tensor = hf_weights[key.hf]
            ours[name] = key.from_hf(tensor) if key.from_hf else tensor
            used.add(key.hf)
    unexpected = sorted(set(hf_weights) - used - set(redundant))
    if unexpected:
        raise UserError(f"{source} has tensors the {model.config.family} model does not use: "
                        f"{', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
    check_weights(model, ours, source)
    model.load_state_dict(ours, strict=False)
    return model


def export_weights(model, key_map: dict) -> dict:
    """-> {HF name: tensor} for every tensor the model saves."""
    weights = weights_for_saving(model)
    unmapped = sorted(set(weights) - set(key_map))
    if unmapped:
        raise ValueError(f"key map misses {', '.join(unmapped)}")
    out = {}
    for name, tensor in weights.items():
        key = _key(key_map[name])
        out[key.hf] = (key.to_hf(tensor) if key.to_hf else tensor).contiguous()
    return out


def read_hf_checkpoint(directory) -> tuple:
    """A Hugging Face model directory -> (config dict, {name: tensor})."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise UserError(f"{directory} is not a Hugging Face checkpoint: it has no config.json")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as err:
        raise UserError(f"{config_path} is not valid JSON: {err}") from None
    if (directory / "model.safetensors").is_file():
        weights = load_file(directory / "model.safetensors")
    elif (directory / "pytorch_model.bin").is_file():
        weights = torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise UserError(f"{directory} has neither model.safetensors nor pytorch_model.bin")
    return config, weights


def load_hf(directory):
    """A Hugging Face checkpoint directory -> the matching attnlab model (eval mode)."""
    hf_config, hf_weights = read_hf_checkpoint(directory)
    model_type = hf_config.get("model_type")
    if model_type not in FAMILIES:
        raise UserError(f"{directory}: model_type {model_type!r} cannot be imported; "
                        f"supported: {', '.join(sorted(FAMILIES))}")
    family = FAMILIES[model_type]
    config = family.config_from_hf(hf_config)
    model = build_model(config)
    import_weights(model, hf_weights, family.key_map(config), family.redundant(config), source=str(directory))
    return model.eval()


def save_hf(model, directory, model_type: str):
    """Write `model` as a Hugging Face checkpoint (config.json + model.safetensors)."""
    if model_type not in FAMILIES:
        raise UserError(f"cannot export to {model_type!r}; supported: {', '.join(sorted(FAMILIES))}")
    family = FAMILIES[model_type]
    if model.config.family != family.our_family:
        raise UserError(f"a {model.config.family} model cannot be exported as {model_type}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(family.config_to_hf(model.config), indent=2) + "\n")
    save_file(export_weights(model, family.key_map(model.config)), directory / "model.safetensors",
              metadata={"format": "pt"})
