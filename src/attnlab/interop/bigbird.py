"""Hugging Face BigBird (model_type big_bird) <-> our BigBird (block-sparse attention)."""

from ..errors import UserError
from ..models.bigbird import BigBirdConfig
from . import long_encoder
from .common import BERT_LAYER
from .keymap import KeyMap
from .registry import HFModelType, HFSpec, register_hf


def keymap(c: BigBirdConfig, prefix: str) -> KeyMap:
    return long_encoder.keymap(c, prefix, BERT_LAYER, ("cls.predictions.transform.dense",
                               "cls.predictions.transform.LayerNorm", "cls.predictions.decoder.weight",
                               "cls.predictions.bias"), ignore=(r"cls\.predictions\.decoder\.bias",))


def config_from_hf(hf: dict, head: str, keys) -> BigBirdConfig:
    for field, supported in (("attention_type", "block_sparse"), ("use_bias", True), ("rescale_embeddings", False),
                             ("position_embedding_type", "absolute")):
        if hf.get(field, supported) != supported:
            raise UserError(f"BigBird with {field}={hf[field]!r} is not supported; attnlab imports "
                            f"{field}={supported!r}")
    config = BigBirdConfig(**long_encoder.fields_from_hf(hf, head), sparse_block_size=hf.get("block_size", 64),
                           n_random_blocks=hf.get("num_random_blocks", 3))
    _check_classifier(config)
    return config


def config_to_hf(c: BigBirdConfig) -> dict:
    _check_classifier(c)
    return {**long_encoder.fields_to_hf("big_bird", c), "attention_type": "block_sparse",
            "block_size": c.sparse_block_size, "num_random_blocks": c.n_random_blocks}


def _check_classifier(c: BigBirdConfig):
    """Their classification head uses hidden_act; ours is fixed to GELU (tanh)."""
    if c.head == "classification" and c.activation != "gelu_tanh":
        raise UserError("a BigBird classifier needs hidden_act gelu_new (activation gelu_tanh)")


SPEC = register_hf(HFSpec("bigbird", (HFModelType("big_bird", "BigBird", "bert.", config_from_hf, config_to_hf,
                                                  keymap, long_encoder.HEADS),)))
