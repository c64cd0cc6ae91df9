"""What the Longformer and BigBird key maps share: a BERT-shaped encoder with sparse self-attention.

Registers nothing itself; longformer.py and bigbird.py build their specs from it.
"""

from .common import POSITION_IDS, activation, activation_to_hf, labels_from_hf, labels_to_hf
from .keymap import KeyMap, affine, rename

HEADS = {"Model": "none", "ForMaskedLM": "mlm", "ForSequenceClassification": "classification"}


def keymap(c, prefix: str, layer: dict, mlm: tuple, ignore: tuple) -> KeyMap:
    """`layer`: our block sub-module -> theirs; `mlm`: their (transform, norm, decoder weight, output bias)."""
    emb = f"{prefix}embeddings."
    rules = [rename("embeddings.tok.weight", emb + "word_embeddings.weight"),
             rename("embeddings.pos.weight", emb + "position_embeddings.weight"),
             rename("embeddings.types.weight", emb + "token_type_embeddings.weight"),
             *affine("embeddings.norm", emb + "LayerNorm")]
    for i in range(c.n_layer):
        for ours, theirs in layer.items():
            rules += affine(f"blocks.{i}.{ours}", f"{prefix}encoder.layer.{i}.{theirs}")
    if c.head == "mlm":
        transform, norm, decoder, bias = mlm
        rules += [*affine("mlm.transform", transform), *affine("mlm.norm", norm),
                  rename("mlm.decoder.weight", decoder, optional=True),  # tied to the embeddings
                  rename("mlm.decoder.bias", bias)]
    if c.head == "classification":
        rules += [*affine("classifier.dense", "classifier.dense"), *affine("classifier.out", "classifier.out_proj")]
    return KeyMap(rules, ignore=(POSITION_IDS, r"([a-z]+\.)?pooler\.(dense\.)?(weight|bias)", *ignore))


def fields_from_hf(hf: dict, head: str) -> dict:
    pad = hf.get("pad_token_id")
    return dict(vocab_size=hf["vocab_size"], max_positions=hf["max_position_embeddings"],
                n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"], d_model=hf["hidden_size"],
                ffn_hidden=hf["intermediate_size"], type_vocab_size=hf.get("type_vocab_size", 1),
                activation=activation(hf.get("hidden_act", "gelu")), norm_eps=hf.get("layer_norm_eps", 1e-12),
                dropout=hf.get("hidden_dropout_prob", 0.1), attn_dropout=hf.get("attention_probs_dropout_prob", 0.1),
                pad_token_id=0 if pad is None else pad, head=head, **labels_from_hf(hf))


def fields_to_hf(model_type: str, c) -> dict:
    return {"model_type": model_type, "vocab_size": c.vocab_size, "max_position_embeddings": c.max_positions,
            "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head, "hidden_size": c.d_model,
            "intermediate_size": c.ffn_size, "type_vocab_size": c.type_vocab_size,
            "hidden_act": activation_to_hf(c.activation), "layer_norm_eps": c.norm_eps,
            "hidden_dropout_prob": c.dropout, "attention_probs_dropout_prob": c.attn_dropout,
            "pad_token_id": c.pad_token_id, "tie_word_embeddings": True, **labels_to_hf(c)}
