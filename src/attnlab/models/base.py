"""What every model shares: its config, an output record, and the family registry.

Each family registers one `FamilySpec` (at the bottom of its models/<family>.py) that declares
what it is: its config and model classes, its kind, the block class that is the unit of FSDP
sharding (unless `fsdp_unit` names another), distillation and compression, a tiny preset, an
example batch and its processor.
Everything outside models/ learns what a model can do from its spec (`family_spec`), never by
probing the model. A model is built from its config; `model(**batch)` returns a `ModelOutput`
whose `loss` is set when the batch holds targets.
"""

import dataclasses
import math
from typing import Callable

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import UserError

# What a model is for, and so which verbs and endpoints apply (see DESIGN.md, "What each kind answers").
CAUSAL_LM, SEQ2SEQ, ENCODER, CLASSIFIER, GRAPH = "causal_lm", "seq2seq", "encoder", "classifier", "graph"
DUAL_ENCODER = "dual_encoder"
KINDS = {
    CAUSAL_LM: "a causal language model",
    SEQ2SEQ: "an encoder-decoder (sequence to sequence) model",
    ENCODER: "a bidirectional encoder",
    CLASSIFIER: "a classifier of images, audio or video",
    GRAPH: "a graph neural network",
    DUAL_ENCODER: "a dual encoder of images and texts into one space",
}
# What a classifier reads (FamilySpec.modality); its processor reads files of that modality.
MEDIA_MODALITIES = ("image", "audio", "video")
# The objective `attnlab train` uses for a kind when the run config names no task (see default_task).
DEFAULT_TASKS = {CAUSAL_LM: "lm", SEQ2SEQ: "seq2seq", ENCODER: "mlm", GRAPH: "node_classification",
                 DUAL_ENCODER: "contrastive"}


@dataclasses.dataclass(frozen=True)
class FamilySpec:
    """What a family is, declared once; registering it enrols the family in every verb and in the
    contract test (tests/test_families.py)."""

    config_class: type  # a ModelConfig subclass; its `family` names the family
    model_class: type
    kind: str  # one of KINDS
    block_class: type  # the repeated block: FSDP unit, distillation and compression scope
    tiny_preset: str  # a preset small enough for tests, trainable by the kind's default task
    example_batch: Callable  # (config, generator) -> a batch (dict of tensors) with targets
    processor: type  # raw input -> model input: `load(directory)`, `exists(directory)`, `example(config)`;
    # instances `save(directory)`. A classifier's is a processors/media.py MediaProcessor.
    modality: str = "text"  # "text", or for a classifier what it reads: one of MEDIA_MODALITIES
    fsdp_unit: type = None  # the module FSDP shards as one unit when it is not the block (None: the block)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"{self.name}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if (self.kind == CLASSIFIER) != (self.modality in MEDIA_MODALITIES):
            raise ValueError(f"{self.name}: a classifier reads one of {', '.join(MEDIA_MODALITIES)} and only a "
                             f"classifier does; got kind {self.kind!r} with modality {self.modality!r}")

    @property
    def name(self) -> str:
        return self.config_class.family

    @property
    def sharding_unit(self) -> type:
        return self.fsdp_unit or self.block_class


FAMILIES = {}  # family name -> FamilySpec
PRESETS = {}  # preset name -> config


def register(spec: FamilySpec) -> FamilySpec:
    """Enrol a family: called once, at the bottom of its model file."""
    FAMILIES[spec.name] = spec
    spec.model_class.config_class = spec.config_class
    return spec


def family_spec(family_or_model) -> FamilySpec:
    """The spec of a family name, a config, or a model."""
    name = family_or_model
    if isinstance(family_or_model, nn.Module):
        name = family_or_model.config.family
    elif isinstance(family_or_model, ModelConfig):
        name = family_or_model.family
    if name not in FAMILIES:
        raise UserError(f"unknown model family {name!r}; known families: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


def default_task(spec: FamilySpec) -> str:
    """The objective `attnlab train` uses for a family when the run config names no task: its
    kind's, and for a classifier its modality's (image_classification, audio_classification, ...)."""
    if spec.kind == CLASSIFIER:
        return f"{spec.modality}_classification"
    return DEFAULT_TASKS[spec.kind]


def families_of_kind(kind: str) -> list:
    return sorted(name for name, spec in FAMILIES.items() if spec.kind == kind)


def config_from_dict(values: dict):
    return family_spec(values.get("family")).config_class.from_dict(values)


def build_model(config) -> "Model":
    return family_spec(config).model_class(config)


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

    def classifier_for(self, names: list, pooling: str | None = None) -> "Model":
        """A sequence classifier for the label `names` carrying these weights (fine-tuning). A
        family without a classification head to fine-tune refuses in one line."""
        raise UserError(f"{self.config.family} models have no sequence-classification head to fine-tune; "
                        "fine-tune a BERT-family encoder (e.g. --base minilm)")

    @property
    def generates(self) -> bool:
        """Whether the model predicts the next token, so that generate and perplexity apply: every
        causal LM and seq2seq model by its kind; a family whose config can make it bidirectional
        answers from that setting."""
        return family_spec(self).kind in (CAUSAL_LM, SEQ2SEQ)


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


# -- example batches: what the contract test feeds each kind's tiny model ------------------------

def causal_lm_batch(config, generator: torch.Generator, batch: int = 2, length: int = 24) -> dict:
    """input_ids (B, T) and next-token targets (B, T), T at most the context."""
    length = min(length, config.max_seq_len)
    ids = torch.randint(config.vocab_size, (batch, length + 1), generator=generator)
    return {"input_ids": ids[:, :-1], "targets": ids[:, 1:]}


def seq2seq_batch(config, generator: torch.Generator, batch: int = 2, source: int = 12, target: int = 8) -> dict:
    """Right-padded sources (B, S) with their mask, and targets (B, T) ending in eos, -100 after it."""
    first = 3  # ids below are pad, eos and the decoder start in every seq2seq tokenizer made here
    input_ids = torch.randint(first, config.vocab_size, (batch, source), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[-1, source // 2:] = 0
    input_ids = input_ids.masked_fill(attention_mask == 0, config.pad_id)
    labels = torch.randint(first, config.vocab_size, (batch, target), generator=generator)
    labels[:, -2] = config.eos_id
    labels[:, -1] = -100
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def mlm_batch(config, generator: torch.Generator, batch: int = 2, length: int = 24) -> dict:
    """Right-padded token ids (B, T) with their mask and masked-LM labels (-100 where not predicted)."""
    input_ids = torch.randint(config.pad_token_id + 1, config.vocab_size, (batch, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[-1, length - length // 4:] = 0
    input_ids = input_ids.masked_fill(attention_mask == 0, config.pad_token_id)
    predicted = (torch.rand(batch, length, generator=generator) < 0.3) & attention_mask.bool()
    predicted[:, 1] = True
    labels = torch.randint(config.pad_token_id + 1, config.vocab_size, (batch, length), generator=generator)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels.masked_fill(~predicted, -100)}


def classifier_batch(inputs: dict, n_labels: int, generator: torch.Generator) -> dict:
    """A classifier's example batch: its processor's `inputs` (B, ...) and a label (B,) per row."""
    rows = len(next(iter(inputs.values())))
    return {**inputs, "labels": torch.randint(n_labels, (rows,), generator=generator)}
