"""The Hugging Face model types attnlab converts, each registered by its family's own file.

An `HFSpec` belongs to one family of ours and lists the Hugging Face model types it converts
to and from (BERT, RoBERTa and DistilBERT are all our `bert`); `export_type` picks the one an
export writes. interop/<family>.py calls `register_hf(spec)` when it is imported, and the
package imports every module it holds, so a new family needs nothing outside its own file.
`import_hf` and `export_hf` read only this registry.
"""

import dataclasses
from typing import Callable

from ..errors import UserError


@dataclasses.dataclass(frozen=True)
class HFModelType:
    """One Hugging Face model_type: its config translation and key map."""
    model_type: str  # config.json "model_type"
    class_prefix: str  # "Bert" in BertForMaskedLM
    base_prefix: str  # "bert." before the base model's keys in a model with a head
    config_from_hf: Callable  # (hf config dict, head, keys of the weights) -> our config
    config_to_hf: Callable  # our config -> hf config dict
    keymap: Callable  # (our config, prefix) -> KeyMap
    heads: dict  # architecture class suffix ("ForMaskedLM") -> our head ("mlm")

    def architecture(self, head: str) -> str:
        suffix = {v: k for k, v in self.heads.items()}.get(head)
        if suffix is None:
            raise UserError(f"a {self.model_type} model with head {head!r} has no Hugging Face architecture")
        return self.class_prefix + suffix


@dataclasses.dataclass(frozen=True)
class HFSpec:
    """One family of ours (config.family) and the Hugging Face model types it converts."""
    family: str
    model_types: tuple  # of HFModelType
    export_type: Callable = None  # our config -> the model_type it exports as; None: the only one

    def __post_init__(self):
        if len(self.model_types) != 1 and self.export_type is None:
            raise ValueError(f"the {self.family} HF spec has {len(self.model_types)} model types and "
                             "needs export_type to choose one")

    def for_export(self, config) -> HFModelType:
        if self.export_type is None:
            return self.model_types[0]
        chosen = self.export_type(config)
        return next(t for t in self.model_types if t.model_type == chosen)


HF_MODEL_TYPES: dict[str, HFModelType] = {}  # Hugging Face model_type -> its translation
HF_SPECS: dict[str, HFSpec] = {}  # our family name -> its spec


def register_hf(spec: HFSpec) -> HFSpec:
    """Called once by each interop/<family>.py at import."""
    taken = [t.model_type for t in spec.model_types if t.model_type in HF_MODEL_TYPES]
    if spec.family in HF_SPECS or taken:
        raise ValueError(f"Hugging Face spec registered twice: {spec.family} {taken}")
    HF_SPECS[spec.family] = spec
    HF_MODEL_TYPES.update({t.model_type: t for t in spec.model_types})
    return spec


def hf_spec_for(family: str) -> HFSpec | None:
    """The Hugging Face spec of one of our families, None when it does not convert."""
    return HF_SPECS.get(family)


def hf_model_type(model_type) -> HFModelType:
    """The translation of a config.json model_type, or one line naming those attnlab imports."""
    if model_type not in HF_MODEL_TYPES:
        raise UserError(f"config.json model_type {model_type!r} is not supported; attnlab imports "
                        f"{', '.join(sorted(HF_MODEL_TYPES))}")
    return HF_MODEL_TYPES[model_type]


def model_type_for_export(config) -> HFModelType:
    spec = hf_spec_for(config.family)
    if spec is None:
        raise UserError(f"{config.family} models have no Hugging Face export; attnlab exports "
                        f"{', '.join(sorted(HF_SPECS))}")
    return spec.for_export(config)
