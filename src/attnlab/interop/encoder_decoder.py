"""Hugging Face Marian (MarianMTModel) <-> our original encoder-decoder (family "transformer").

MarianMT is the paper's architecture: post-LN, sinusoidal positions (sines and cosines in
halves), embeddings scaled by sqrt(d_model), plus a fixed per-token logit bias.
"""

import torch

from ..errors import UserError
from ..models.encoder_decoder import TransformerConfig
from .keymap import KeyMap, Rule, affine, rename
from .registry import HFModelType, HFSpec, register_hf

_ACTIVATIONS = {"swish": "silu", "silu": "silu", "gelu": "gelu", "relu": "relu", "gelu_new": "gelu_tanh"}


def config_from_hf(hf: dict, head: str, keys) -> TransformerConfig:
    act = hf.get("activation_function", "gelu")
    if act not in _ACTIVATIONS:
        raise UserError(f"Marian activation_function {act!r} is not supported; supported: {', '.join(_ACTIVATIONS)}")
    for a, b in (("encoder_attention_heads", "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
        if hf[a] != hf[b]:
            raise UserError(f"Marian checkpoints with {a} != {b} are not supported")
    shared = hf.get("share_encoder_decoder_embeddings", True)
    tgt_vocab = hf.get("decoder_vocab_size") or hf["vocab_size"]
    return TransformerConfig(
        vocab_size=hf["vocab_size"], tgt_vocab_size=None if shared else tgt_vocab, share_embeddings=shared,
        tie_weights=hf.get("tie_word_embeddings", True), d_model=hf["d_model"], n_head=hf["encoder_attention_heads"],
        ffn_hidden=hf["encoder_ffn_dim"], n_encoder_layer=hf["encoder_layers"], n_decoder_layer=hf["decoder_layers"],
        dropout=hf.get("dropout", 0.1), activation=_ACTIVATIONS[act], prenorm=False, norm_eps=1e-5,
        scale_embedding=hf.get("scale_embedding", False), position_layout="halves",
        max_positions=hf.get("max_position_embeddings", 1024), output_bias=True, label_smoothing=0.0,
        pad_id=hf["pad_token_id"], eos_id=hf["eos_token_id"],
        decoder_start_id=hf.get("decoder_start_token_id", hf["pad_token_id"]))


def config_to_hf(c: TransformerConfig) -> dict:
    """Without an output bias the export writes an all-zero final_logits_bias, which is the same model."""
    if c.position_layout != "halves":
        raise UserError(f"a transformer with position_layout={c.position_layout!r} cannot be exported as marian: "
                        "Marian computes its own sinusoids with sines and cosines in halves. Train with "
                        "model.position_layout=halves (and post-LN, model.prenorm=false) to export")
    if c.prenorm:
        raise UserError("a pre-LN transformer (prenorm=true) cannot be exported as marian, which is post-LN. "
                        "Train with model.prenorm=false (and model.position_layout=halves) to export")
    act = {"silu": "swish", "gelu": "gelu", "relu": "relu", "gelu_tanh": "gelu_new"}.get(c.activation)
    if act is None:
        raise UserError(f"activation {c.activation!r} has no Marian equivalent")
    return {
        "model_type": "marian", "is_encoder_decoder": True,
        "vocab_size": c.vocab_size, "decoder_vocab_size": c.target_vocab,
        "share_encoder_decoder_embeddings": c.share_embeddings, "tie_word_embeddings": c.tie_weights,
        "d_model": c.d_model, "encoder_attention_heads": c.n_head, "decoder_attention_heads": c.n_head,
        "encoder_ffn_dim": c.ffn_hidden, "decoder_ffn_dim": c.ffn_hidden, "encoder_layers": c.n_encoder_layer,
        "decoder_layers": c.n_decoder_layer, "dropout": c.dropout, "activation_function": act,
        "scale_embedding": c.scale_embedding, "max_position_embeddings": c.max_positions,
        "pad_token_id": c.pad_id, "eos_token_id": c.eos_id, "decoder_start_token_id": c.decoder_start_id,
        "forced_eos_token_id": None,
    }


def _layer(ours: str, theirs: str, cross: bool) -> list:
    rules = []
    for a in ("q", "k", "v", "out"):
        rules += affine(f"{ours}.self_attn.{a}_proj", f"{theirs}.self_attn.{a}_proj")
        if cross:
            rules += affine(f"{ours}.cross_attn.{a}_proj", f"{theirs}.encoder_attn.{a}_proj")
    rules += affine(f"{ours}.norm_self", f"{theirs}.self_attn_layer_norm")
    if cross:
        rules += affine(f"{ours}.norm_cross", f"{theirs}.encoder_attn_layer_norm")
    return rules + [*affine(f"{ours}.ffn.up", f"{theirs}.fc1"), *affine(f"{ours}.ffn.down", f"{theirs}.fc2"),
                    *affine(f"{ours}.norm_ffn", f"{theirs}.final_layer_norm")]


def _flat(ts):
    return (ts[0].reshape(-1),)


def _row(ts):
    return (ts[0].reshape(1, -1),)


def _logits_bias(c: TransformerConfig) -> Rule:
    """final_logits_bias (1, V) <-> our logits_bias (V,); a model without one exports zeros,
    and reads back only a zero bias."""
    if c.output_bias:
        return Rule(("logits_bias",), ("final_logits_bias",), _flat, _row)

    def zeros(ts):  # nothing of ours -> (1, V)
        return (torch.zeros(1, c.target_vocab),)

    def only_zeros(ts):  # (1, V) -> nothing of ours
        if ts[0].any():
            raise UserError("final_logits_bias is not all zeros; this model needs output_bias=true to hold it")
        return ()

    return Rule((), ("final_logits_bias",), only_zeros, zeros)


def keymap(c: TransformerConfig, prefix: str) -> KeyMap:
    """MarianMTModel keeps the network under `model.` and the output bias and head outside it.
    Its sinusoid tables are fixed, and shared or tied embeddings repeat one tensor."""
    if c.share_embeddings:
        rules = [rename("src_emb.weight", f"{prefix}shared.weight"),
                 rename("tgt_emb.weight", f"{prefix}decoder.embed_tokens.weight", optional=True)]
    else:
        rules = [rename("src_emb.weight", f"{prefix}encoder.embed_tokens.weight"),
                 rename("tgt_emb.weight", f"{prefix}decoder.embed_tokens.weight")]
    rules += [_logits_bias(c), rename("lm_head.weight", "lm_head.weight", optional=c.tie_weights)]
    for i in range(c.n_encoder_layer):
        rules += _layer(f"encoder_blocks.{i}", f"{prefix}encoder.layers.{i}", cross=False)
    for i in range(c.n_decoder_layer):
        rules += _layer(f"decoder_blocks.{i}", f"{prefix}decoder.layers.{i}", cross=True)
    return KeyMap(rules, ignore=(r"(model\.)?(encoder|decoder)\.embed_(positions|tokens)\.weight",))


SPEC = register_hf(HFSpec("transformer", (HFModelType("marian", "Marian", "model.", config_from_hf, config_to_hf,
                                                      keymap, {"MTModel": "lm"}),)))
