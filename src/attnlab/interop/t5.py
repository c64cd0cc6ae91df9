"""Hugging Face T5 (T5ForConditionalGeneration) <-> attnlab T5."""

from ..errors import UserError
from ..models.t5 import T5Config
from .keymap import KeyMap, rename
from .registry import HFModelType, HFSpec, register_hf

_FFN = {"relu": "relu", "gated-gelu": "geglu"}


def config_from_hf(hf: dict, head: str, keys) -> T5Config:
    proj = hf.get("feed_forward_proj", "relu")
    if proj not in _FFN:
        raise UserError(f"T5 feed_forward_proj {proj!r} is not supported; supported: {', '.join(_FFN)}")
    return T5Config(
        vocab_size=hf["vocab_size"], d_model=hf["d_model"], head_dim=hf["d_kv"], ffn_hidden=hf["d_ff"],
        n_layer=hf["num_layers"], n_decoder_layer=hf.get("num_decoder_layers") or hf["num_layers"], n_head=hf["num_heads"],
        num_buckets=hf.get("relative_attention_num_buckets", 32),
        max_distance=hf.get("relative_attention_max_distance", 128),
        dropout=hf.get("dropout_rate", 0.1), norm_eps=hf.get("layer_norm_epsilon", 1e-6), activation=_FFN[proj],
        tie_weights=hf.get("tie_word_embeddings", True) is not False,
        pad_id=hf.get("pad_token_id", 0), eos_id=hf.get("eos_token_id", 1),
        decoder_start_id=hf.get("decoder_start_token_id", hf.get("pad_token_id", 0)))


def config_to_hf(c: T5Config) -> dict:
    return {
        "model_type": "t5", "is_encoder_decoder": True,
        "vocab_size": c.vocab_size, "d_model": c.d_model, "d_kv": c.head_dim, "d_ff": c.ffn_hidden,
        "num_layers": c.n_layer, "num_decoder_layers": c.n_decoder_layer or c.n_layer, "num_heads": c.n_head,
        "relative_attention_num_buckets": c.num_buckets, "relative_attention_max_distance": c.max_distance,
        "dropout_rate": c.dropout, "layer_norm_epsilon": c.norm_eps,
        "feed_forward_proj": {v: k for k, v in _FFN.items()}[c.activation],
        "tie_word_embeddings": c.tie_weights, "pad_token_id": c.pad_id, "eos_token_id": c.eos_id,
        "decoder_start_token_id": c.decoder_start_id,
    }


def _ffn(ours: str, theirs: str, activation: str) -> list:
    names = {"gate": "wi_0", "up": "wi_1", "down": "wo"} if activation == "geglu" else {"up": "wi", "down": "wo"}
    return [rename(f"{ours}.ffn.{a}.weight", f"{theirs}.DenseReluDense.{b}.weight") for a, b in names.items()]


def _attention(ours: str, theirs: str) -> list:
    return [rename(f"{ours}.{a}_proj.weight", f"{theirs}.{b}.weight") for a, b in
            (("q", "q"), ("k", "k"), ("v", "v"), ("out", "o"))]


def keymap(c: T5Config, prefix: str) -> KeyMap:
    """T5ForConditionalGeneration's names carry no prefix; its embed_tokens repeat `shared`."""
    rules = [
        rename("shared.weight", "shared.weight"),
        rename("encoder_bias.embedding.weight", "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
        rename("decoder_bias.embedding.weight", "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
        rename("encoder_norm.weight", "encoder.final_layer_norm.weight"),
        rename("decoder_norm.weight", "decoder.final_layer_norm.weight"),
        rename("lm_head.weight", "lm_head.weight", optional=c.tie_weights),
    ]
    for i in range(c.n_layer):
        ours, theirs = f"encoder_blocks.{i}", f"encoder.block.{i}.layer"
        rules += [*_attention(f"{ours}.self_attn", f"{theirs}.0.SelfAttention"),
                  rename(f"{ours}.norm_self.weight", f"{theirs}.0.layer_norm.weight"),
                  *_ffn(ours, f"{theirs}.1", c.activation),
                  rename(f"{ours}.norm_ffn.weight", f"{theirs}.1.layer_norm.weight")]
    for i in range(c.n_decoder_layer or c.n_layer):
        ours, theirs = f"decoder_blocks.{i}", f"decoder.block.{i}.layer"
        rules += [*_attention(f"{ours}.self_attn", f"{theirs}.0.SelfAttention"),
                  rename(f"{ours}.norm_self.weight", f"{theirs}.0.layer_norm.weight"),
                  *_attention(f"{ours}.cross_attn", f"{theirs}.1.EncDecAttention"),
                  rename(f"{ours}.norm_cross.weight", f"{theirs}.1.layer_norm.weight"),
                  *_ffn(ours, f"{theirs}.2", c.activation),
                  rename(f"{ours}.norm_ffn.weight", f"{theirs}.2.layer_norm.weight")]
    return KeyMap(rules, ignore=(r"(encoder|decoder)\.embed_tokens\.weight",))


SPEC = register_hf(HFSpec("t5", (HFModelType("t5", "T5", "", config_from_hf, config_to_hf, keymap,
                                             {"ForConditionalGeneration": "lm"}),)))
