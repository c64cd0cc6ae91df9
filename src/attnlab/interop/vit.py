"""Hugging Face ViTModel / ViTForImageClassification <-> our ViT (head "none" / "classifier").

The key names are those of the files on the Hugging Face Hub (and of `save_pretrained`):
vit.embeddings.*, vit.encoder.layer.N.attention.attention.query, ..., vit.layernorm, classifier.
"""

from ..errors import UserError
from ..models.vit import ViTConfig
from .common import activation, activation_to_hf, labels_from_hf, labels_to_hf
from .keymap import KeyMap, affine, rename
from .registry import HFModelType, HFSpec, register_hf

HEADS = {"Model": "none", "ForImageClassification": "classifier"}
# our block sub-module -> theirs, under encoder.layer.N
LAYER = {"self_attn.q_proj": "attention.attention.query", "self_attn.k_proj": "attention.attention.key",
         "self_attn.v_proj": "attention.attention.value", "self_attn.out_proj": "attention.output.dense",
         "norm_self": "layernorm_before", "ffn.up": "intermediate.dense", "ffn.down": "output.dense",
         "norm_ffn": "layernorm_after"}


def config_from_hf(hf: dict, head: str, keys) -> ViTConfig:
    if not hf.get("qkv_bias", True):
        raise UserError("ViT checkpoints without query/key/value biases (qkv_bias=false) are not supported")
    if hf.get("pooler_act", "tanh") != "tanh" or hf.get("pooler_output_size", hf["hidden_size"]) != hf["hidden_size"]:
        raise UserError("only a tanh pooler of the hidden size is supported (pooler_act, pooler_output_size)")
    size, patch = hf.get("image_size", 224), hf.get("patch_size", 16)
    if not isinstance(size, int) or not isinstance(patch, int):
        raise UserError(f"only square images and patches are supported, got image_size {size}, patch_size {patch}")
    return ViTConfig(
        image_size=size, patch_size=patch, n_channels=hf.get("num_channels", 3),
        n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"], d_model=hf["hidden_size"],
        ffn_hidden=hf["intermediate_size"], activation=activation(hf.get("hidden_act", "gelu")),
        norm_eps=hf.get("layer_norm_eps", 1e-12), dropout=hf.get("hidden_dropout_prob", 0.0),
        attn_dropout=hf.get("attention_probs_dropout_prob", 0.0),
        pooler=any(k.endswith("pooler.dense.weight") for k in keys), head=head,
        **(labels_from_hf(hf) if head == "classifier" else {}))


def config_to_hf(c: ViTConfig) -> dict:
    if c.pre_norm or not c.patch_bias:
        raise UserError("a ViT with pre_norm or without patch_bias (CLIP's vision tower) has no Hugging Face ViT "
                        "equivalent")
    hf = {"model_type": "vit", "image_size": c.image_size, "patch_size": c.patch_size, "num_channels": c.n_channels,
          "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head, "hidden_size": c.d_model,
          "intermediate_size": c.ffn_size, "hidden_act": activation_to_hf(c.activation), "layer_norm_eps": c.norm_eps,
          "hidden_dropout_prob": c.dropout, "attention_probs_dropout_prob": c.attn_dropout, "qkv_bias": True,
          "pooler_act": "tanh", "pooler_output_size": c.d_model}
    return {**hf, **(labels_to_hf(c) if c.head == "classifier" else {})}


def keymap(c: ViTConfig, prefix: str) -> KeyMap:
    p = prefix
    rules = [*affine("patches.proj", f"{p}embeddings.patch_embeddings.projection"),
             rename("cls_token", f"{p}embeddings.cls_token"),
             rename("positions", f"{p}embeddings.position_embeddings"),
             *affine("norm", f"{p}layernorm")]
    for i in range(c.n_layer):
        for ours, theirs in LAYER.items():
            rules += affine(f"blocks.{i}.{ours}", f"{p}encoder.layer.{i}.{theirs}")
    if c.pooler:
        rules += affine("pooler", f"{p}pooler.dense")
    if c.head == "classifier":
        rules += affine("classifier", "classifier")
    return KeyMap(rules)


register_hf(HFSpec("vit", (HFModelType("vit", "ViT", "vit.", config_from_hf, config_to_hf, keymap, HEADS),)))
