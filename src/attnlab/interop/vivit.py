"""Hugging Face ViViT and TimeSformer <-> our Vivit: attention="joint" is VivitForVideoClassification
(head="none": VivitModel), attention="divided" is TimesformerForVideoClassification (TimesformerModel)
with attention_type="divided_space_time".

VivitModel's tanh pooler is not part of our model: importing leaves it out (it does not change the
hidden states), and a VivitModel exported from head="none" starts its pooler afresh.

Names are those of the checkpoints on the Hub, which `save_pretrained` writes (ViT-style
`encoder.layer.N.attention.attention.query`, ...). TimeSformer fuses q, k and v into one `qkv`
Linear and embeds each frame with a Conv2d, our tubelet Conv3d with one frame.
"""

import torch

from ..errors import UserError
from ..models.vivit import VivitConfig
from .common import activation, activation_to_hf, labels_from_hf, labels_to_hf
from .keymap import KeyMap, Rule, affine, rename
from .registry import HFModelType, HFSpec, register_hf

HEADS = {"Model": "none", "ForVideoClassification": "classifier"}
VIVIT_POOLER = r"(vivit\.)?pooler\.dense\.(weight|bias)"  # VivitModel's tanh pooler: not part of our model
ACT_FROM_HF = {"gelu_fast": "gelu_tanh"}  # ViViT's default, tanh-approximated GELU

# our block sub-module -> a ViT-style Hugging Face layer's
VIT_LAYER = {"self_attn.q_proj": "attention.attention.query", "self_attn.k_proj": "attention.attention.key",
             "self_attn.v_proj": "attention.attention.value", "self_attn.out_proj": "attention.output.dense",
             "norm_self": "layernorm_before", "ffn.up": "intermediate.dense", "ffn.down": "output.dense",
             "norm_ffn": "layernorm_after"}
TIMESFORMER_LAYER = {"self_attn.out_proj": "attention.output.dense", "norm_self": "layernorm_before",
                     "temporal_attn.out_proj": "temporal_attention.output.dense",
                     "norm_temporal": "temporal_layernorm", "temporal_fc": "temporal_dense",
                     "ffn.up": "intermediate.dense", "ffn.down": "output.dense", "norm_ffn": "layernorm_after"}


def reshaped(ours: str, theirs: str, our_shape, their_shape) -> Rule:
    """One tensor stored in another shape (e.g. their (1, N, C) position table, our (N, C))."""
    return Rule((ours,), (theirs,), lambda ts: (ts[0].reshape(our_shape),), lambda ts: (ts[0].reshape(their_shape),))


def fused_linear_qkv(ours: str, theirs: str) -> list:
    """A fused Linear (3 * C, C) `qkv` <-> our q_proj, k_proj, v_proj, weights and biases."""
    def split(ts):
        return tuple(ts[0].chunk(3, dim=0))

    def join(ts):
        return (torch.cat(ts, dim=0),)

    return [Rule(tuple(f"{ours}.{n}_proj.{p}" for n in "qkv"), (f"{theirs}.qkv.{p}",), split, join)
            for p in ("weight", "bias")]


def _common(c: VivitConfig, prefix: str, their_layer: dict) -> list:
    emb = f"{prefix}embeddings."
    rules = [reshaped("embedding.cls_token", emb + "cls_token", (c.d_model,), (1, 1, c.d_model)),
             *affine("norm", f"{prefix}layernorm")]
    if c.head == "classifier":
        rules += affine("classifier", "classifier")
    for i in range(c.n_layer):
        rules += [rule for ours, theirs in their_layer.items()
                  for rule in affine(f"blocks.{i}.{ours}", f"{prefix}encoder.layer.{i}.{theirs}")]
    return rules


def vivit_keymap(c: VivitConfig, prefix: str) -> KeyMap:
    emb = f"{prefix}embeddings."
    table = (1 + c.grid[0] * c.grid[1], c.d_model)
    return KeyMap([*_common(c, prefix, VIT_LAYER),
                   reshaped("embedding.positions", emb + "position_embeddings", table, (1, *table)),
                   *affine("embedding.tubelets.proj", emb + "patch_embeddings.projection")], ignore=(VIVIT_POOLER,))


def timesformer_keymap(c: VivitConfig, prefix: str) -> KeyMap:
    emb = f"{prefix}embeddings."
    steps, patches = c.grid
    conv = (c.d_model, c.n_channels, c.patch_size, c.patch_size)
    rules = [*_common(c, prefix, TIMESFORMER_LAYER),
             reshaped("embedding.space_positions", emb + "position_embeddings", (1 + patches, c.d_model),
                      (1, 1 + patches, c.d_model)),
             reshaped("embedding.time_positions", emb + "time_embeddings", (steps, c.d_model), (1, steps, c.d_model)),
             reshaped("embedding.tubelets.proj.weight", emb + "patch_embeddings.projection.weight",
                      (c.d_model, c.n_channels, 1, c.patch_size, c.patch_size), conv),
             rename("embedding.tubelets.proj.bias", emb + "patch_embeddings.projection.bias")]
    for i in range(c.n_layer):
        layer = f"{prefix}encoder.layer.{i}."
        rules += fused_linear_qkv(f"blocks.{i}.self_attn", layer + "attention.attention")
        rules += fused_linear_qkv(f"blocks.{i}.temporal_attn", layer + "temporal_attention.attention")
    return KeyMap(rules)


def _square(hf: dict, name: str) -> int:
    value = hf[name]
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise UserError(f"{name}={value} is not square; attnlab's video models take square frames and patches")
        value = value[0]
    return value


def _shared_from_hf(hf: dict, head: str) -> dict:
    if not hf.get("qkv_bias", True):
        raise UserError("qkv_bias=false is not supported; attnlab's attention has q, k, v biases")
    act = hf.get("hidden_act", "gelu")
    return dict(image_size=_square(hf, "image_size"), n_frames=hf["num_frames"], n_channels=hf["num_channels"],
                n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"], d_model=hf["hidden_size"],
                ffn_hidden=hf["intermediate_size"], activation=ACT_FROM_HF.get(act) or activation(act),
                norm_eps=hf.get("layer_norm_eps", 1e-6), dropout=hf.get("hidden_dropout_prob", 0.0),
                attn_dropout=hf.get("attention_probs_dropout_prob", 0.0), head=head,
                **(labels_from_hf(hf) if head == "classifier" else {}))


def _shared_to_hf(c: VivitConfig, model_type: str) -> dict:
    return {"model_type": model_type, "image_size": c.image_size, "num_frames": c.n_frames,
            "num_channels": c.n_channels, "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head,
            "hidden_size": c.d_model, "intermediate_size": c.ffn_size, "hidden_act": activation_to_hf(c.activation),
            "layer_norm_eps": c.norm_eps, "hidden_dropout_prob": c.dropout,
            "attention_probs_dropout_prob": c.attn_dropout, "qkv_bias": True,
            **(labels_to_hf(c) if c.head == "classifier" else {})}


def vivit_from_hf(hf: dict, head: str, keys) -> VivitConfig:
    frames, size, width = hf["tubelet_size"]
    if size != width:
        raise UserError(f"tubelet_size={hf['tubelet_size']} is not square; attnlab's tubelets are square")
    return VivitConfig(**_shared_from_hf(hf, head), patch_size=size, tubelet_frames=frames, attention="joint")


def vivit_to_hf(c: VivitConfig) -> dict:
    return {**_shared_to_hf(c, "vivit"), "tubelet_size": [c.tubelet_frames, c.patch_size, c.patch_size]}


def timesformer_from_hf(hf: dict, head: str, keys) -> VivitConfig:
    kind = hf.get("attention_type", "divided_space_time")
    if kind != "divided_space_time":
        raise UserError(f"TimeSformer attention_type={kind!r} is not supported; attnlab imports "
                        "divided_space_time (joint attention: import a ViViT checkpoint)")
    return VivitConfig(**_shared_from_hf(hf, head), patch_size=_square(hf, "patch_size"), tubelet_frames=1,
                       attention="divided")


def timesformer_to_hf(c: VivitConfig) -> dict:
    if c.tubelet_frames != 1:
        raise UserError(f"a divided-attention model with tubelet_frames={c.tubelet_frames} has no TimeSformer "
                        "equivalent (TimeSformer embeds one frame at a time); use tubelet_frames=1")
    return {**_shared_to_hf(c, "timesformer"), "patch_size": c.patch_size, "attention_type": "divided_space_time"}


SPEC = register_hf(HFSpec("vivit", (
    HFModelType("vivit", "Vivit", "vivit.", vivit_from_hf, vivit_to_hf, vivit_keymap, HEADS),
    HFModelType("timesformer", "Timesformer", "timesformer.", timesformer_from_hf, timesformer_to_hf,
                timesformer_keymap, HEADS)),
    export_type=lambda c: "timesformer" if c.attention == "divided" else "vivit"))
