"""Hugging Face Longformer <-> our Longformer (a BERT-shaped encoder, sliding-window + global attention)."""

from ..errors import UserError
from ..models.longformer import LongformerConfig
from . import long_encoder
from .common import BERT_LAYER
from .keymap import KeyMap
from .registry import HFModelType, HFSpec, register_hf

_GLOBALS = {f"self_attn.{p}_global": f"attention.self.{n}_global" for p, n in
            (("q", "query"), ("k", "key"), ("v", "value"))}


def keymap(c: LongformerConfig, prefix: str) -> KeyMap:
    return long_encoder.keymap(c, prefix, {**BERT_LAYER, **_GLOBALS},
                               ("lm_head.dense", "lm_head.layer_norm", "lm_head.decoder.weight", "lm_head.bias"),
                               ignore=(r"lm_head\.decoder\.bias",))  # a tied copy of the output bias


def config_from_hf(hf: dict, head: str, keys) -> LongformerConfig:
    windows = hf.get("attention_window", 512)
    windows = [windows] if isinstance(windows, int) else list(windows)
    if len(set(windows)) != 1:
        raise UserError(f"Longformer with a different attention_window per layer ({windows}) is not supported")
    return LongformerConfig(**long_encoder.fields_from_hf(hf, head), attention_window=windows[0])


def config_to_hf(c: LongformerConfig) -> dict:
    if c.dilation != 1:
        raise UserError("a dilated Longformer has no Hugging Face equivalent; export needs dilation=1")
    return {**long_encoder.fields_to_hf("longformer", c), "attention_window": [c.attention_window] * c.n_layer}


SPEC = register_hf(HFSpec("longformer", (HFModelType("longformer", "Longformer", "longformer.", config_from_hf,
                                                     config_to_hf, keymap, long_encoder.HEADS),)))
