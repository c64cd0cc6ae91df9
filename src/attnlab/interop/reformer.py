"""Hugging Face Reformer <-> attnlab Reformer: config fields and a key map.

A local key map until the generic interop mechanism lands: `key_pairs(config)` lists
(our name, their name, their tensor -> ours). Their `ReformerModel` names have no prefix;
`ReformerModelWithLMHead` puts them under `reformer.` and adds `lm_head.*`.
"""

from ..errors import UserError
from ..models.reformer import ReformerConfig

_ATTENTION = {
    "lsh": [("qk_proj", "query_key"), ("v_proj", "value")],
    "local": [("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value")],
}


def config_from_hf(hf: dict) -> ReformerConfig:
    """A Hugging Face ReformerConfig (as a dict) -> ReformerConfig."""
    if not isinstance(hf.get("num_buckets"), int):
        raise UserError("only an integer num_buckets is supported (not factorised or unset buckets)")
    kinds = list(hf["attn_layers"])
    return ReformerConfig(
        vocab_size=hf["vocab_size"], block_size=hf["max_position_embeddings"], n_layer=len(kinds), attn_layers=kinds,
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


def key_pairs(config: ReformerConfig):
    """[(our name, their name, their tensor -> ours)] for the encoder (no `reformer.` prefix)."""
    same = lambda t: t  # noqa: E731
    pairs = [("tok_emb.weight", "embeddings.word_embeddings.weight", same)]
    if config.position == "axial":
        pairs += [("pos_emb.rows", "embeddings.position_embeddings.weights.0", lambda t: t.reshape(t.size(0), -1)),
                  ("pos_emb.cols", "embeddings.position_embeddings.weights.1", lambda t: t.reshape(t.size(1), -1))]
    else:
        pairs.append(("pos_emb.weight", "embeddings.position_embeddings.embedding.weight", same))
    for i, kind in enumerate(config.layer_kinds):
        ours, theirs = f"layers.blocks.{i}", f"encoder.layers.{i}"
        names = [(f"{ours}.f.attn.{a}.weight", f"{theirs}.attention.self_attention.{b}.weight")
                 for a, b in _ATTENTION[kind]]
        names.append((f"{ours}.f.attn.out_proj.weight", f"{theirs}.attention.output.dense.weight"))
        for p in ("weight", "bias"):
            names += [(f"{ours}.f.norm.{p}", f"{theirs}.attention.layer_norm.{p}"),
                      (f"{ours}.g.norm.{p}", f"{theirs}.feed_forward.layer_norm.{p}"),
                      (f"{ours}.g.ffn.up.{p}", f"{theirs}.feed_forward.dense.dense.{p}"),
                      (f"{ours}.g.ffn.down.{p}", f"{theirs}.feed_forward.output.dense.{p}")]
        pairs += [(a, b, same) for a, b in names]
    pairs += [(f"norm_f.{p}", f"encoder.layer_norm.{p}", same) for p in ("weight", "bias")]
    return pairs


def state_from_hf(theirs: dict, config: ReformerConfig, with_head: bool) -> dict:
    """Their state dict (ReformerModel, or ReformerModelWithLMHead if with_head) -> ours.
    With no head, our lm_head is left out (load with strict=False)."""
    prefix = "reformer." if with_head else ""
    pairs = [(a, prefix + b, f) for a, b, f in key_pairs(config)]
    if with_head:
        pairs += [("lm_head.weight", "lm_head.decoder.weight", lambda t: t),
                  ("lm_head.bias", "lm_head.bias", lambda t: t)]
    missing = [b for _, b, _ in pairs if b not in theirs]
    if missing:
        raise UserError(f"the Hugging Face Reformer state dict lacks {', '.join(missing[:5])}"
                        f"{' ...' if len(missing) > 5 else ''}; is it a Reformer with the same config?")
    return {a: f(theirs[b]) for a, b, f in pairs}
