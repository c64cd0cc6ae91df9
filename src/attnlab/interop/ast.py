"""Hugging Face ASTModel and ASTForAudioClassification <-> our AST.

Checkpoint files (the hub's, and what transformers' save_pretrained writes) name the weights in the
ViT layout (`encoder.layer.{i}.attention.attention.query`, ...), which transformers >= 5 renames
when it loads them; the files are what this map reads and writes. Their separate CLS and
distillation tokens are rows 0 and 1 of our `special`.
"""

import torch

from ..errors import UserError
from ..models.ast import ASTConfig
from .common import activation, activation_to_hf, labels_from_hf, labels_to_hf
from .keymap import KeyMap, Rule, affine, rename
from .registry import HFModelType, HFSpec, register_hf

MODEL_TYPE = "audio-spectrogram-transformer"
HEADS = {"Model": "none", "ForAudioClassification": "classification"}
LAYER = {"self_attn.q_proj": "attention.attention.query", "self_attn.k_proj": "attention.attention.key",
         "self_attn.v_proj": "attention.attention.value", "self_attn.out_proj": "attention.output.dense",
         "norm_self": "layernorm_before", "norm_ffn": "layernorm_after", "ffn.up": "intermediate.dense",
         "ffn.down": "output.dense"}


def _special_tokens(prefix: str) -> Rule:
    """Our (1, 2, C) special tokens <-> their (1, 1, C) cls_token and distillation_token."""
    names = (f"{prefix}embeddings.cls_token", f"{prefix}embeddings.distillation_token")
    return Rule(("special",), names, lambda ts: (torch.cat(ts, dim=1),), lambda ts: ts[0].split(1, dim=1))


def keymap(c: ASTConfig, prefix: str) -> KeyMap:
    emb = f"{prefix}embeddings."
    rules = [_special_tokens(prefix), rename("positions", emb + "position_embeddings"),
             *affine("patches.proj", emb + "patch_embeddings.projection"), *affine("norm", f"{prefix}layernorm")]
    for i in range(c.n_layer):
        for ours, theirs in LAYER.items():
            rules += affine(f"blocks.{i}.{ours}", f"{prefix}encoder.layer.{i}.{theirs}")
    if c.head == "classification":
        rules += [*affine("head_norm", "classifier.layernorm"), *affine("classifier", "classifier.dense")]
    return KeyMap(rules)


def config_from_hf(hf: dict, head: str, keys) -> ASTConfig:
    if not hf.get("qkv_bias", True):
        raise UserError("AST checkpoints without query/key/value biases (qkv_bias=false) are not supported")
    labels = labels_from_hf(hf) if head == "classification" else {}
    return ASTConfig(num_mel_bins=hf.get("num_mel_bins", 128), max_length=hf.get("max_length", 1024),
                     patch_size=hf.get("patch_size", 16), frequency_stride=hf.get("frequency_stride", 10),
                     time_stride=hf.get("time_stride", 10), n_layer=hf["num_hidden_layers"],
                     n_head=hf["num_attention_heads"], d_model=hf["hidden_size"], ffn_hidden=hf["intermediate_size"],
                     activation=activation(hf.get("hidden_act", "gelu")), norm_eps=hf.get("layer_norm_eps", 1e-12),
                     dropout=hf.get("hidden_dropout_prob", 0.0), attn_dropout=hf.get("attention_probs_dropout_prob", 0.0),
                     head=head, **labels)


def config_to_hf(c: ASTConfig) -> dict:
    return {"model_type": MODEL_TYPE, "num_mel_bins": c.num_mel_bins, "max_length": c.max_length,
            "patch_size": c.patch_size, "frequency_stride": c.frequency_stride, "time_stride": c.time_stride,
            "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head, "hidden_size": c.d_model,
            "intermediate_size": c.ffn_size, "hidden_act": activation_to_hf(c.activation),
            "layer_norm_eps": c.norm_eps, "hidden_dropout_prob": c.dropout,
            "attention_probs_dropout_prob": c.attn_dropout, "qkv_bias": True, "initializer_range": 0.02,
            **labels_to_hf(c)}


SPEC = register_hf(HFSpec("ast", (HFModelType(MODEL_TYPE, "AST", "audio_spectrogram_transformer.", config_from_hf,
                                              config_to_hf, keymap, HEADS),)))
