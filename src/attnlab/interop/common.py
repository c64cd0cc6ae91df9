"""What several Hugging Face key maps share: activation names, label fields, BERT layer names."""

from ..errors import UserError

# Hugging Face hidden_act names <-> our feed-forward activations
ACT_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu",
               "silu": "silu", "swish": "silu", "quick_gelu": "quick_gelu"}
ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu", "quick_gelu": "quick_gelu"}

# a BERT-shaped layer: our block sub-module -> theirs
BERT_LAYER = {"self_attn.q_proj": "attention.self.query", "self_attn.k_proj": "attention.self.key",
              "self_attn.v_proj": "attention.self.value", "self_attn.out_proj": "attention.output.dense",
              "norm_self": "attention.output.LayerNorm", "ffn.up": "intermediate.dense",
              "ffn.down": "output.dense", "norm_ffn": "output.LayerNorm"}
POSITION_IDS = r"([a-z]+\.)?embeddings\.position_ids"  # a buffer, not a weight


def activation(name: str) -> str:
    if name not in ACT_FROM_HF:
        raise UserError(f"hidden activation {name!r} is not supported; attnlab knows {', '.join(ACT_FROM_HF)}")
    return ACT_FROM_HF[name]


def activation_to_hf(name: str) -> str:
    if name not in ACT_TO_HF:
        raise UserError(f"activation {name!r} has no Hugging Face name")
    return ACT_TO_HF[name]


def labels_from_hf(hf: dict) -> dict:
    """config.json's id2label / num_labels -> our n_labels and id2label; Hugging Face's default
    names (LABEL_0, LABEL_1, ...) become id2label=None, which means the same."""
    id2label = {str(k): v for k, v in (hf.get("id2label") or {}).items()}
    if not id2label:
        return {"n_labels": int(hf.get("num_labels", 2)), "id2label": None}
    default = all(name == f"LABEL_{index}" for index, name in id2label.items())
    return {"n_labels": len(id2label), "id2label": None if default else id2label}


def labels_to_hf(c) -> dict:
    """A classifier config's label names (LABEL_i when it has none) as config.json's id2label and label2id."""
    names = [c.id2label[str(i)] if c.id2label else f"LABEL_{i}" for i in range(c.n_labels)]
    return {"id2label": {str(i): name for i, name in enumerate(names)},
            "label2id": {name: i for i, name in enumerate(names)}}


def prefix_in(keys, prefix: str) -> str:
    """`prefix` when some key starts with it (a model with a head), else ""."""
    return prefix if any(k.startswith(prefix) for k in keys) else ""
