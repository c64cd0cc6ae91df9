"""Hugging Face Reformer (ReformerModelWithLMHead) <-> attnlab Reformer: config fields and a key map.

Their `ReformerModel` names have no prefix; `ReformerModelWithLMHead` puts them under
`reformer.` and adds `lm_head.*`, the only architecture `import_hf` takes (our Reformer
always has its LM head).
"""

from ..errors import UserError
from ..models.reformer import ReformerConfig
from .keymap import KeyMap, Rule, affine, rename
from .registry import HFModelType, HFSpec, register_hf

_ATTENTION = {
    "lsh": [("qk_proj", "query_key"), ("v_proj", "value")],
    "local": [("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value")],
}


def config_from_hf(hf: dict, head: str, keys) -> ReformerConfig:
    """A Hugging Face ReformerConfig (as a dict) -> ReformerConfig."""
    if not isinstance(hf.get("num_buckets"), int):
        raise UserError("only an integer num_buckets is supported (not factorised or unset buckets)")
    kinds = list(hf["attn_layers"])
    return ReformerConfig(
        vocab_size=hf["vocab_size"], max_seq_len=hf["max_position_embeddings"], n_layer=len(kinds), attn_layers=kinds,
        n_head=hf["num_attention_heads"], head_dim=hf["attention_head_size"], d_model=hf["hidden_size"],
        ffn_hidden=hf["feed_forward_size"], activation=hf["hidden_act"], causal=hf["is_decoder"],
        chunk_length=hf["lsh_attn_chunk_length"], chunks_before=hf["lsh_num_chunks_before"],
        chunks_after=hf["lsh_num_chunks_after"], n_buckets=hf["num_buckets"], n_hashes=hf["num_hashes"],
        hash_seed=hf["hash_seed"], local_chunk_length=hf["local_attn_chunk_length"],
        local_chunks_before=hf["local_num_chunks_before"], local_chunks_after=hf["local_num_chunks_after"],
        position="axial" if hf["axial_pos_embds"] else "learned", axial_shape=list(hf["axial_pos_shape"]),
        axial_dims=list(hf["axial_pos_embds_dim"]), ffn_chunk_size=hf.get("chunk_size_feed_forward", 0),
        dropout=hf["hidden_dropout_prob"], attn_dropout=hf["lsh_attention_probs_dropout_prob"],
        norm_eps=hf["layer_norm_eps"], pad_id=hf.get("pad_token_id") or 0)


def config_to_hf(c: ReformerConfig) -> dict:
    if not c.causal:
        raise UserError("only a causal Reformer exports: ReformerModelWithLMHead is a decoder (is_decoder=true)")
    if c.position == "rotary":
        raise UserError("a Reformer with rotary positions does not export: Hugging Face's Reformer has axial or "
                        "learned positions only (train with model.position=axial or learned)")
    return {"model_type": "reformer", "vocab_size": c.vocab_size, "max_position_embeddings": c.max_seq_len,
            "attn_layers": c.layer_kinds, "num_attention_heads": c.n_head,
            "attention_head_size": c.attention_head_size, "hidden_size": c.d_model, "feed_forward_size": c.ffn_hidden or 4 * c.d_model, "hidden_act": c.activation,
            "is_decoder": c.causal, "lsh_attn_chunk_length": c.chunk_length, "lsh_num_chunks_before": c.chunks_before,
            "lsh_num_chunks_after": c.chunks_after, "num_buckets": c.n_buckets, "num_hashes": c.n_hashes,
            "hash_seed": c.hash_seed, "local_attn_chunk_length": c.local_chunk_length,
            "local_num_chunks_before": c.local_chunks_before, "local_num_chunks_after": c.local_chunks_after,
            "axial_pos_embds": c.position == "axial", "axial_pos_shape": list(c.axial_shape),
            "axial_pos_embds_dim": list(c.axial_dims), "chunk_size_feed_forward": c.ffn_chunk_size,
            "hidden_dropout_prob": c.dropout, "lsh_attention_probs_dropout_prob": c.attn_dropout,
            "local_attention_probs_dropout_prob": c.attn_dropout, "layer_norm_eps": c.norm_eps,
            "pad_token_id": c.pad_id, "tie_word_embeddings": False}


def _axial(ours: str, theirs: str, axis: int) -> Rule:
    """Their axial table (rows, 1, dim) or (1, cols, dim) <-> ours (rows or cols, dim)."""
    def flat(ts):
        return (ts[0].squeeze(1 - axis),)

    def expand(ts):
        return (ts[0].unsqueeze(1 - axis),)
    return Rule((ours,), (theirs,), flat, expand)


def keymap(c: ReformerConfig, prefix: str) -> KeyMap:
    """With a prefix (`reformer.`) the map covers ReformerModelWithLMHead, head included;
    without one, the bare ReformerModel."""
    emb = f"{prefix}embeddings."
    rules = [rename("tok_emb.weight", emb + "word_embeddings.weight")]
    if c.position == "axial":
        rules += [_axial("pos_emb.rows", emb + "position_embeddings.weights.0", 0),
                  _axial("pos_emb.cols", emb + "position_embeddings.weights.1", 1)]
    else:
        rules.append(rename("pos_emb.weight", emb + "position_embeddings.embedding.weight"))
    for i, kind in enumerate(c.layer_kinds):
        ours, theirs = f"layers.blocks.{i}", f"{prefix}encoder.layers.{i}"
        rules += [rename(f"{ours}.f.attn.{a}.weight", f"{theirs}.attention.self_attention.{b}.weight")
                  for a, b in _ATTENTION[kind]]
        rules += [rename(f"{ours}.f.attn.out_proj.weight", f"{theirs}.attention.output.dense.weight"),
                  *affine(f"{ours}.f.norm", f"{theirs}.attention.layer_norm"),
                  *affine(f"{ours}.g.norm", f"{theirs}.feed_forward.layer_norm"),
                  *affine(f"{ours}.g.ffn.up", f"{theirs}.feed_forward.dense.dense"),
                  *affine(f"{ours}.g.ffn.down", f"{theirs}.feed_forward.output.dense")]
    rules += affine("norm_f", f"{prefix}encoder.layer_norm")
    if prefix:
        rules += [rename("lm_head.weight", "lm_head.decoder.weight"), rename("lm_head.bias", "lm_head.bias")]
    return KeyMap(rules, ignore=(r"lm_head\.decoder\.bias",))


SPEC = register_hf(HFSpec("reformer", (HFModelType("reformer", "Reformer", "reformer.", config_from_hf,
                                                   config_to_hf, keymap, {"ModelWithLMHead": "lm"}),)))
