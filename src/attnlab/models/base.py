"""What every model shares: its config, an output record, and the family registry.

The trainer, generator, compressors and converters rely only on this: a model is built from
its config, `model(**batch)` returns a `ModelOutput` whose `loss` is set when the batch holds
targets, and causal models answer `forward(input_ids, ..., cache=KVCache)`.
"""

import dataclasses
import math

import torch
from torch import nn

from ..errors import UserError

FAMILIES = {}  # family name -> (config class, model class)
PRESETS = {}  # preset name -> config


def register(config_cls):
    """Class decorator for a model: `@register(GPTConfig) class GPT(Model)`."""
    def wrap(model_cls):
        FAMILIES[config_cls.family] = (config_cls, model_cls)
        model_cls.config_class = config_cls
        return model_cls
    return wrap


def config_from_dict(values: dict):
    family = values.get("family")
    if family not in FAMILIES:
        raise UserError(f"unknown model family {family!r}; known families: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[family][0].from_dict(values)


def build_model(config) -> "Model":
    return FAMILIES[config.family][1](config)


def preset(name: str, **overrides):
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name].replace(**overrides)


@dataclasses.dataclass
class ModelOutput:
    logits: torch.Tensor = None
    loss: torch.Tensor = None
    hidden_states: torch.Tensor = None
    aux_logits: torch.Tensor = None  # a second head's logits, e.g. next-sentence prediction


class Model(nn.Module):
    config_class = None

    def __init__(self, config):
        super().__init__()
        self.config = config

    def num_parameters(self, trainable_only=False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def init_gpt_style(model: nn.Module, n_layer: int, std: float = 0.02):
    """Normal(0, std) for linear and embedding weights, zero biases, and residual output
    projections scaled by 1/sqrt(2 * n_layer) (GPT-2)."""
    residual_std = std / math.sqrt(2 * n_layer)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            is_residual_out = name.endswith("out_proj") or name.endswith("ffn.down")
            nn.init.normal_(module.weight, 0.0, residual_std if is_residual_out else std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, std)
