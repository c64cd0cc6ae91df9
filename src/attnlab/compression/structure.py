"""What a compressed model's checkpoint must remember beyond its config: per-layer head and
neuron counts after structured pruning, which projections are quantised (and how), and LoRA
adapters. `describe_structure` writes it down (compression.json beside config.json);
`apply_structure` rebuilds the same shapes on a freshly built model before the weights load.
"""

from torch import nn

from ..errors import UserError
from ..layers.attention import AttentionBase
from ..layers.feedforward import FeedForward
from .lora import inject_lora, lora_modules
from .prune import prune_heads, prune_neurons
from .quantize import QUANTIZED, SCHEMES

STRUCTURE_FILE = "compression.json"


def describe_structure(model: nn.Module) -> dict:
    """{} for a plain model; otherwise the edits that rebuild this model's shapes."""
    spec = {}
    heads = {n: m.n_head for n, m in model.named_modules() if isinstance(m, AttentionBase) and m.pruned}
    neurons = {n: m.up.out_features for n, m in model.named_modules() if isinstance(m, FeedForward) and m.pruned}
    quantized = {n: m.spec() for n, m in model.named_modules() if isinstance(m, QUANTIZED)}
    adapters = lora_modules(model)
    if heads:
        spec["heads"] = heads
    if neurons:
        spec["ffn_hidden"] = neurons
    if quantized:
        spec["quantized"] = quantized
    if adapters:
        spec["lora"] = {**model.lora_settings, "merged": any(m.merged for m in adapters.values())}
    return spec


def apply_structure(model: nn.Module, spec: dict) -> nn.Module:
    """Reshape `model` as `spec` says (its weights are then overwritten by the checkpoint)."""
    for name, n_head in spec.get("heads", {}).items():
        prune_heads(model.get_submodule(name), range(n_head))
    for name, hidden in spec.get("ffn_hidden", {}).items():
        prune_neurons(model.get_submodule(name), range(hidden))
    if "lora" in spec:
        lora = spec["lora"]
        inject_lora(model, lora["rank"], lora["alpha"], lora["dropout"], lora["targets"], lora["train_also"],
                    lora.get("train_biases", False))
        for module in lora_modules(model).values():
            module.merged = lora["merged"]
    for name, options in spec.get("quantized", {}).items():
        options = dict(options)
        scheme = options.pop("scheme", None)
        if scheme not in SCHEMES:
            raise UserError(f"{STRUCTURE_FILE} names an unknown quantisation scheme {scheme!r}; the checkpoint is corrupt")
        parent_name, _, attribute = name.rpartition(".")
        module = SCHEMES[scheme].empty(options.pop("in_features"), options.pop("out_features"),
                                       options.pop("bias"), **options)
        setattr(model.get_submodule(parent_name), attribute, module)
    return model
