"""LoRA (Hu et al. 2021): a frozen linear layer plus a trainable low-rank update.

    y = x W^T + b + (alpha / r) * dropout(x) A^T B^T        A (r, in), B (out, r)

B starts at zero, so a freshly injected model computes exactly what its base does. Only A and
B (and any head named in `train_also`, e.g. a new classifier, and with `train_biases` every
bias vector, as in BitFit) are trained and saved. For deployment `merge` folds (alpha / r) B A
into W, and `unmerge` takes it out again.

`LoRALinear` subclasses `nn.Linear` and keeps the base `weight` and `bias` under their own
names, so a model with adapters still loads and saves its base weights under the usual keys.
"""

import hashlib
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..errors import UserError
from .targets import find_linears, parse_targets

METADATA_KEY = "attnlab_lora"


class LoRALinear(nn.Linear):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.rank, self.alpha = rank, alpha
        self.scaling = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout)
        self.merged = False

    def delta(self) -> torch.Tensor:
        return (self.lora_b @ self.lora_a) * self.scaling  # (out, in)

    def forward(self, x):
        out = F.linear(x, self.weight, self.bias)
        if self.merged:
            return out
        return out + (self.lora_dropout(x) @ self.lora_a.T @ self.lora_b.T) * self.scaling

    @torch.no_grad()
    def merge(self):
        if not self.merged:
            self.weight += self.delta().to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if self.merged:
            self.weight -= self.delta().to(self.weight.dtype)
            self.merged = False

    def extra_repr(self):
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}, merged={self.merged}"


def lora_modules(model: nn.Module) -> dict:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def inject_lora(model: nn.Module, rank=8, alpha=16.0, dropout=0.0, targets=("q", "v"), train_also=(),
                train_biases=False):
    """Wrap the targeted projections in LoRA and freeze everything else except the parameters
    whose names start with one of `train_also` (e.g. "classifier") and, with `train_biases`,
    every bias (linear and norm layers: a few thousand numbers that move the features at little
    cost). Returns the model."""
    if not isinstance(rank, int) or rank <= 0:
        raise UserError(f"LoRA rank must be a positive integer, got {rank!r}")
    if lora_modules(model):
        raise UserError("this model already has LoRA adapters; merge_lora(..., remove=True) them first")
    targets = parse_targets(targets)
    found = find_linears(model, targets)
    if not found:
        raise UserError(f"no {', '.join(targets)} projections found in the model to put LoRA on")
    for p in model.parameters():
        p.requires_grad_(False)
    for _, parent, attribute, linear in found:
        setattr(parent, attribute, LoRALinear(linear, rank, alpha, dropout))
    _unfreeze(model, train_also)
    if train_biases:
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.requires_grad_(True)
    model.lora_settings = {"rank": rank, "alpha": alpha, "dropout": dropout, "targets": list(targets),
                           "train_also": list(train_also), "train_biases": train_biases}
    return model


def _unfreeze(model, prefixes):
    names = [n for n, _ in model.named_parameters()]
    for prefix in prefixes:
        matched = [n for n in names if n == prefix or n.startswith(prefix + ".")]
        if not matched:
            raise UserError(f"train_also: the model has no parameters under {prefix!r}")
        for name in matched:
            model.get_parameter(name).requires_grad_(True)


def merge_lora(model: nn.Module, remove=False):
    """Fold every adapter into its base weight; `remove` also swaps the wrappers back for plain
    nn.Linear layers (the deployable model, saved as an ordinary checkpoint)."""
    for name, module in lora_modules(model).items():
        module.merge()
        if remove:
            plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                              device="meta")
            plain.weight, plain.bias = module.weight, module.bias
            plain.weight.requires_grad_(True)
            if plain.bias is not None:
                plain.bias.requires_grad_(True)
            parent_name, _, attribute = name.rpartition(".")
            setattr(model.get_submodule(parent_name), attribute, plain)
    if remove and hasattr(model, "lora_settings"):
        del model.lora_settings
    return model


def unmerge_lora(model: nn.Module):
    for module in lora_modules(model).values():
        module.unmerge()
    return model


# -- saving and loading adapters ---------------------------------------------------------------

def adapter_weights(model: nn.Module) -> dict:
    """The trainable tensors: every lora_a / lora_b plus the `train_also` parameters."""
    return {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def base_fingerprint(model: nn.Module, skip=()) -> str:
    """sha256 of the frozen base weights (unmerged), so an adapter refuses a different base."""
    merged = [m for m in lora_modules(model).values() if m.merged]
    for m in merged:
        m.unmerge()
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if ".lora_" in name or name in skip:
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    for m in merged:
        m.merge()
    return digest.hexdigest()


def save_lora(model: nn.Module, path):
    """Write only the adapters (and `train_also` heads) to a safetensors file, with the
    settings and the identity of the base they belong to in its metadata."""
    if not lora_modules(model):
        raise UserError("the model has no LoRA adapters to save")
    weights = adapter_weights(model)
    meta = {**model.lora_settings, "base_family": model.config.family, "base_config": model.config.to_dict(),
            "base_fingerprint": base_fingerprint(model, skip=set(weights))}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(weights, tmp, metadata={METADATA_KEY: json.dumps(meta)})
    tmp.replace(path)


def read_lora(path):
    """-> (settings dict, tensors dict); a file that is not an attnlab LoRA file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"LoRA file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(METADATA_KEY)
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except (SafetensorError, OSError) as err:
        raise UserError(f"{path} is not a readable safetensors file ({err})") from None
    if raw is None:
        raise UserError(f"{path} is not an attnlab LoRA file (no {METADATA_KEY} metadata); "
                        "save adapters with save_lora / attnlab finetune --lora")
    return json.loads(raw), tensors


def load_lora(model: nn.Module, path, check_base=True):
    """Inject adapters with the file's settings into `model` (its base) and load them.

    The base must be the one the adapters were trained on: same family and config, and (with
    `check_base`) the same frozen weights; otherwise one UserError says what differs."""
    settings, tensors = read_lora(path)
    if settings["base_family"] != model.config.family or settings["base_config"] != model.config.to_dict():
        theirs, ours = settings["base_config"], model.config.to_dict()
        differs = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        raise UserError(f"LoRA file {path} was made for another base model ({settings['base_family']}; "
                        f"differs in {', '.join(differs) or 'family'}); load it onto the checkpoint it was "
                        "trained from")
    if check_base and base_fingerprint(model, skip=set(tensors)) != settings["base_fingerprint"]:
        raise UserError(f"LoRA file {path} was trained on a base with different weights; load it onto the "
                        "checkpoint it was trained from")
    inject_lora(model, settings["rank"], settings["alpha"], settings["dropout"], settings["targets"],
                settings["train_also"], settings.get("train_biases", False))
    expected = adapter_weights(model)
    if set(expected) != set(tensors) or any(expected[k].shape != tensors[k].shape for k in expected):
        raise UserError(f"LoRA file {path} does not fit this model's adapters (tensor names or shapes differ)")
    with torch.no_grad():
        for name, tensor in tensors.items():
            model.get_parameter(name).copy_(tensor)
    return model
