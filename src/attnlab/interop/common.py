"""What several Hugging Face key maps share: activation names, label fields, BERT layer names."""

from ..errors import UserError

# Hugging Face hidden_act names <-> our feed-forward activations
ACT_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu",
               "silu": "silu", "swish": "silu"}
ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}

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


def n_labels(hf: dict) -> int:
    return len(hf["id2label"]) if hf.get("id2label") else int(hf.get("num_labels", 2))


def labels_to_hf(n_labels: int) -> dict:
    return {"id2label": {str(i): f"LABEL_{i}" for i in range(n_labels)},
            "label2id": {f"LABEL_{i}": i for i in range(n_labels)}}


def prefix_in(keys, prefix: str) -> str:
    """`prefix` when some key starts with it (a model with a head), else ""."""
    return prefix if any(k.startswith(prefix) for k in keys) else ""
