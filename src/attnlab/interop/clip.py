"""Hugging Face CLIPModel <-> our Clip (the causal text tower; a registered-encoder text tower has
no Hugging Face equivalent).

Keys: vision_model.embeddings.{class_embedding, patch_embedding, position_embedding},
vision_model.{pre_layrnorm, post_layernorm}, {vision,text}_model.encoder.layers.N.{self_attn.q_proj,
..., layer_norm1, mlp.fc1, mlp.fc2, layer_norm2}, text_model.embeddings.{token,position}_embedding,
text_model.final_layer_norm, visual_projection, text_projection, logit_scale.

Hugging Face pools the text tower by the legacy argmax rule exactly when eos_token_id is 2, else at
the first eos_token_id: our text_pooling follows from it, and an export that would change the rule
is refused. Its image processor resizes the short side and crops the centre; ours resizes the whole
image to the square (the same for square images).
"""

from ..errors import UserError
from ..models.clip import ClipConfig
from .common import POSITION_IDS, activation, activation_to_hf
from .keymap import KeyMap, Rule, affine, rename
from .registry import HFModelType, HFSpec, register_hf

LEGACY_EOS = 2  # Hugging Face's sign for the argmax pooling rule
# our block sub-module -> theirs, under encoder.layers.N
LAYER = {"self_attn.q_proj": "self_attn.q_proj", "self_attn.k_proj": "self_attn.k_proj",
         "self_attn.v_proj": "self_attn.v_proj", "self_attn.out_proj": "self_attn.out_proj",
         "norm_self": "layer_norm1", "ffn.up": "mlp.fc1", "ffn.down": "mlp.fc2", "norm_ffn": "layer_norm2"}


def config_from_hf(hf: dict, head: str, keys) -> ClipConfig:
    text, vision = hf.get("text_config") or {}, hf.get("vision_config") or {}
    towers = {name: (activation(c.get("hidden_act", "quick_gelu")), c.get("layer_norm_eps", 1e-5),
                     c.get("dropout", 0.0), c.get("attention_dropout", 0.0)) for name, c in (("text", text),
                                                                                              ("vision", vision))}
    if towers["text"] != towers["vision"]:
        raise UserError("a CLIP whose towers differ in hidden_act, layer_norm_eps or dropout is not supported")
    act, eps, dropout, attn_dropout = towers["text"]
    eos = text.get("eos_token_id", 49407)
    return ClipConfig(
        projection_dim=hf.get("projection_dim", 512), image_size=vision.get("image_size", 224),
        patch_size=vision.get("patch_size", 32), n_channels=vision.get("num_channels", 3),
        vision_layers=vision.get("num_hidden_layers", 12), vision_heads=vision.get("num_attention_heads", 12),
        vision_width=vision.get("hidden_size", 768), vision_ffn=vision.get("intermediate_size", 3072),
        vocab_size=text.get("vocab_size", 49408), max_text_len=text.get("max_position_embeddings", 77),
        text_layers=text.get("num_hidden_layers", 12), text_heads=text.get("num_attention_heads", 8),
        text_width=text.get("hidden_size", 512), text_ffn=text.get("intermediate_size", 2048), eos_token_id=eos,
        text_pooling="argmax" if eos == LEGACY_EOS else "eos", activation=act, norm_eps=eps, dropout=dropout,
        attn_dropout=attn_dropout, logit_scale_init=hf.get("logit_scale_init_value", 2.6592))


def config_to_hf(c: ClipConfig) -> dict:
    if c.text_encoder is not None:
        raise UserError("a CLIP whose text tower is a registered encoder (text_encoder) has no Hugging Face "
                        "CLIPModel equivalent")
    if (c.text_pooling == "argmax") != (c.eos_token_id == LEGACY_EOS):
        raise UserError(f"Hugging Face's CLIP pools by argmax exactly when eos_token_id is {LEGACY_EOS}; this model "
                        f"pools by {c.text_pooling} with eos_token_id {c.eos_token_id}, so it cannot export exactly")
    shared = {"hidden_act": activation_to_hf(c.activation), "layer_norm_eps": c.norm_eps, "dropout": c.dropout,
              "attention_dropout": c.attn_dropout}
    text = {"vocab_size": c.vocab_size, "max_position_embeddings": c.max_text_len, "num_hidden_layers": c.text_layers,
            "num_attention_heads": c.text_heads, "hidden_size": c.text_width,
            "intermediate_size": c.text_ffn or 4 * c.text_width, "eos_token_id": c.eos_token_id,
            "projection_dim": c.projection_dim, **shared}
    vision = {"image_size": c.image_size, "patch_size": c.patch_size, "num_channels": c.n_channels,
              "num_hidden_layers": c.vision_layers, "num_attention_heads": c.vision_heads,
              "hidden_size": c.vision_width, "intermediate_size": c.vision_ffn or 4 * c.vision_width,
              "projection_dim": c.projection_dim, **shared}
    return {"model_type": "clip", "projection_dim": c.projection_dim, "logit_scale_init_value": c.logit_scale_init,
            "text_config": text, "vision_config": vision}


def reshaped(ours: str, theirs: str, our_shape: tuple, their_shape: tuple) -> Rule:
    """One tensor stored in another shape: ViT's [CLS] (1, 1, C) and positions (1, T, C) are
    CLIP's (C,) and (T, C)."""
    return Rule((ours,), (theirs,), lambda ts: (ts[0].reshape(our_shape),), lambda ts: (ts[0].reshape(their_shape),))


def keymap(c: ClipConfig, prefix: str) -> KeyMap:
    v, t = f"{prefix}vision_model.", f"{prefix}text_model."
    positions = (c.image_size // c.patch_size) ** 2 + 1
    rules = [rename("vision.patches.proj.weight", f"{v}embeddings.patch_embedding.weight"),
             reshaped("vision.cls_token", f"{v}embeddings.class_embedding", (1, 1, -1), (-1,)),
             reshaped("vision.positions", f"{v}embeddings.position_embedding.weight", (1, positions, -1),
                      (positions, -1)),
             *affine("vision.pre_norm", f"{v}pre_layrnorm"), *affine("vision.norm", f"{v}post_layernorm"),
             rename("text.tok_emb.weight", f"{t}embeddings.token_embedding.weight"),
             rename("text.positions", f"{t}embeddings.position_embedding.weight"),
             *affine("text.norm", f"{t}final_layer_norm"),
             rename("vision_proj.weight", f"{prefix}visual_projection.weight"),
             rename("text_proj.weight", f"{prefix}text_projection.weight"),
             rename("logit_scale", f"{prefix}logit_scale")]
    for tower, theirs, layers in (("vision", v, c.vision_layers), ("text", t, c.text_layers)):
        for i in range(layers):
            for ours, their_name in LAYER.items():
                rules += affine(f"{tower}.blocks.{i}.{ours}", f"{theirs}encoder.layers.{i}.{their_name}")
    return KeyMap(rules, ignore=(POSITION_IDS, r".*position_ids"))


register_hf(HFSpec("clip", (HFModelType("clip", "CLIP", "", config_from_hf, config_to_hf, keymap, {"Model": "none"}),)))
