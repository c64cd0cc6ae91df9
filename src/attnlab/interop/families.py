"""The Hugging Face families attnlab converts: config translation and key maps.

GPT-2 goes into our GPT; BERT, RoBERTa and DistilBERT into our Bert, whose config fields
carry the differences; Longformer and BigBird into their own BERT-shaped encoders. Each
encoder head maps to one Hugging Face architecture class (BertForMaskedLM,
RobertaForSequenceClassification, ...). T5, Marian and Reformer (t5.py, marian.py,
reformer.py) each have a single architecture: T5ForConditionalGeneration, MarianMTModel,
ReformerModelWithLMHead.
"""

import dataclasses
from typing import Callable

from ..errors import UserError
from ..models.bert import BertConfig
from ..models.bigbird import BigBirdConfig
from ..models.gpt import GPTConfig
from ..models.longformer import LongformerConfig
from . import marian, reformer, t5
from .keymap import KeyMap, affine, fused_qkv, rename, transposed

# Hugging Face hidden_act names <-> our feed-forward activations
ACT_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu",
               "silu": "silu", "swish": "silu"}
ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}

# architecture class suffix <-> our encoder head
HEAD_SUFFIXES = {"Model": "none", "ForMaskedLM": "mlm", "ForPreTraining": "pretraining",
                 "ForSequenceClassification": "sequence", "ForTokenClassification": "token",
                 "ForQuestionAnswering": "qa"}


@dataclasses.dataclass(frozen=True)
class Family:
    model_type: str  # config.json "model_type"
    class_prefix: str  # "Bert" in BertForMaskedLM
    base_prefix: str  # "bert." before the encoder's keys in a model with a head
    config_from_hf: Callable  # (hf config dict, head, keys of the weights) -> our config
    config_to_hf: Callable  # our config -> hf config dict
    keymap: Callable  # (our config, prefix) -> KeyMap
    heads: dict = dataclasses.field(default_factory=lambda: dict(HEAD_SUFFIXES))

    def architecture(self, head: str) -> str:
        suffix = {v: k for k, v in self.heads.items()}.get(head)
        if suffix is None:
            raise UserError(f"a {self.model_type} model with head {head!r} has no Hugging Face architecture")
        return self.class_prefix + suffix


def _activation(name):
    if name not in ACT_FROM_HF:
        raise UserError(f"hidden activation {name!r} is not supported; attnlab knows {', '.join(ACT_FROM_HF)}")
    return ACT_FROM_HF[name]


def _activation_to_hf(name):
    if name not in ACT_TO_HF:
        raise UserError(f"activation {name!r} has no Hugging Face name")
    return ACT_TO_HF[name]


def _labels(hf: dict) -> int:
    return len(hf["id2label"]) if hf.get("id2label") else int(hf.get("num_labels", 2))


def _label_fields(n_labels: int) -> dict:
    return {"id2label": {str(i): f"LABEL_{i}" for i in range(n_labels)},
            "label2id": {f"LABEL_{i}": i for i in range(n_labels)}}


# -- encoders: BERT, RoBERTa, DistilBERT --------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class EncoderNames:
    layers: str  # where the blocks live, under the base prefix
    layer: dict  # our block sub-module -> theirs
    pooler: dict  # head -> their pooler (a [CLS] Linear), with "{p}" for the base prefix
    mlm: tuple  # their (transform, norm, decoder weight, output bias)
    classifier: dict  # head -> their final Linear
    ignore: tuple  # their keys that carry no weights


_BERT_LAYER = {"self_attn.q_proj": "attention.self.query", "self_attn.k_proj": "attention.self.key",
               "self_attn.v_proj": "attention.self.value", "self_attn.out_proj": "attention.output.dense",
               "norm_self": "attention.output.LayerNorm", "ffn.up": "intermediate.dense",
               "ffn.down": "output.dense", "norm_ffn": "output.LayerNorm"}
_DISTILBERT_LAYER = {"self_attn.q_proj": "attention.q_lin", "self_attn.k_proj": "attention.k_lin",
                     "self_attn.v_proj": "attention.v_lin", "self_attn.out_proj": "attention.out_lin",
                     "norm_self": "sa_layer_norm", "ffn.up": "ffn.lin1", "ffn.down": "ffn.lin2",
                     "norm_ffn": "output_layer_norm"}
_POSITION_IDS = r"([a-z]+\.)?embeddings\.position_ids"

ENCODER_NAMES = {
    "bert": EncoderNames(
        layers="encoder.layer", layer=_BERT_LAYER,
        pooler={"none": "{p}pooler.dense", "sequence": "{p}pooler.dense", "pretraining": "{p}pooler.dense"},
        mlm=("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm",
             "cls.predictions.decoder.weight", "cls.predictions.bias"),
        classifier={"sequence": "classifier", "token": "classifier", "qa": "qa_outputs",
                    "pretraining": "cls.seq_relationship"},
        ignore=(_POSITION_IDS, r"cls\.predictions\.decoder\.bias")),
    "roberta": EncoderNames(
        layers="encoder.layer", layer=_BERT_LAYER,
        pooler={"none": "{p}pooler.dense", "sequence": "classifier.dense"},
        mlm=("lm_head.dense", "lm_head.layer_norm", "lm_head.decoder.weight", "lm_head.bias"),
        classifier={"sequence": "classifier.out_proj", "token": "classifier", "qa": "qa_outputs"},
        ignore=(_POSITION_IDS, r"lm_head\.decoder\.bias")),
    "distilbert": EncoderNames(
        layers="transformer.layer", layer=_DISTILBERT_LAYER,
        pooler={"sequence": "pre_classifier"},
        mlm=("vocab_transform", "vocab_layer_norm", "vocab_projector.weight", "vocab_projector.bias"),
        classifier={"sequence": "classifier", "token": "classifier", "qa": "qa_outputs"},
        ignore=(_POSITION_IDS,)),
}


def encoder_keymap(model_type: str, c: BertConfig, prefix: str) -> KeyMap:
    names = ENCODER_NAMES[model_type]
    emb = f"{prefix}embeddings."
    rules = [rename("embeddings.tok.weight", emb + "word_embeddings.weight"),
             rename("embeddings.pos.weight", emb + "position_embeddings.weight"),
             *affine("embeddings.norm", emb + "LayerNorm")]
    if c.type_vocab_size:
        rules.append(rename("embeddings.types.weight", emb + "token_type_embeddings.weight"))
    for i in range(c.n_layer):
        for ours, theirs in names.layer.items():
            rules += affine(f"blocks.{i}.{ours}", f"{prefix}{names.layers}.{i}.{theirs}")
    if c.pooler and c.head in names.pooler:
        rules += affine("pooler", names.pooler[c.head].format(p=prefix))
    if c.head in ("mlm", "pretraining"):
        transform, norm, decoder, bias = names.mlm
        rules += [*affine("mlm.transform", transform), *affine("mlm.norm", norm),
                  rename("mlm.decoder.weight", decoder, optional=c.tie_weights), rename("mlm.decoder.bias", bias)]
    if c.head in names.classifier:
        rules += affine("classifier", names.classifier[c.head])
    return KeyMap(rules, ignore=names.ignore)


def _encoder_config_from_hf(model_type: str):
    def convert(hf: dict, head: str, keys) -> BertConfig:
        names = ENCODER_NAMES[model_type]
        prefix = _prefix_in(keys, f"{model_type}.")
        has_pooler = head in names.pooler and names.pooler[head].format(p=prefix) + ".weight" in keys
        if model_type == "distilbert":
            if hf.get("sinusoidal_pos_embds"):
                raise UserError("DistilBERT with sinusoidal_pos_embds is not supported; use learned positions")
            fields = dict(vocab_size=hf["vocab_size"], max_positions=hf["max_position_embeddings"],
                          n_layer=hf["n_layers"], n_head=hf["n_heads"], d_model=hf["dim"], ffn_hidden=hf["hidden_dim"],
                          type_vocab_size=0, activation=_activation(hf.get("activation", "gelu")), norm_eps=1e-12,
                          dropout=hf.get("dropout", 0.1), attn_dropout=hf.get("attention_dropout", 0.1),
                          pooler_activation="relu")
        else:
            if hf.get("position_embedding_type", "absolute") != "absolute":
                raise UserError(f"position_embedding_type {hf['position_embedding_type']!r} is not supported; "
                                "attnlab imports absolute positions")
            fields = dict(vocab_size=hf["vocab_size"], max_positions=hf["max_position_embeddings"],
                          n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"], d_model=hf["hidden_size"],
                          ffn_hidden=hf["intermediate_size"], type_vocab_size=hf.get("type_vocab_size", 2),
                          activation=_activation(hf.get("hidden_act", "gelu")),
                          norm_eps=hf.get("layer_norm_eps", 1e-12), dropout=hf.get("hidden_dropout_prob", 0.1),
                          attn_dropout=hf.get("attention_probs_dropout_prob", 0.1),
                          position_style="roberta" if model_type == "roberta" else "absolute")
            if model_type == "roberta" and head in ("mlm", "pretraining") and fields["activation"] != "gelu":
                raise UserError("RoBERTa's LM head always uses GELU; a non-GELU hidden_act is not supported with it")
        pad = hf.get("pad_token_id")
        return BertConfig(**fields, pad_token_id=0 if pad is None else pad, pooler=has_pooler, head=head,
                          n_labels=_labels(hf), tie_weights=hf.get("tie_word_embeddings", True))
    return convert


def _encoder_config_to_hf(model_type: str):
    def convert(c: BertConfig) -> dict:
        if c.pooling != "cls":
            raise UserError(f"pooling={c.pooling!r} has no Hugging Face equivalent (its heads read [CLS]); "
                            "only pooling='cls' encoders export")
        common = {"model_type": model_type, "vocab_size": c.vocab_size, "max_position_embeddings": c.max_positions,
                  "pad_token_id": c.pad_token_id, "tie_word_embeddings": c.tie_weights, **_label_fields(c.n_labels)}
        if model_type == "distilbert":
            return {**common, "n_layers": c.n_layer, "n_heads": c.n_head, "dim": c.d_model, "hidden_dim": c.ffn_size,
                    "activation": _activation_to_hf(c.activation), "dropout": c.dropout,
                    "attention_dropout": c.attn_dropout, "sinusoidal_pos_embds": False}
        return {**common, "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head, "hidden_size": c.d_model,
                "intermediate_size": c.ffn_size, "type_vocab_size": c.type_vocab_size,
                "hidden_act": _activation_to_hf(c.activation), "layer_norm_eps": c.norm_eps,
                "hidden_dropout_prob": c.dropout, "attention_probs_dropout_prob": c.attn_dropout,
                "position_embedding_type": "absolute"}
    return convert


def encoder_model_type(c: BertConfig) -> str:
    """Which Hugging Face family an attnlab encoder exports as."""
    if c.position_style == "roberta":
        if not c.type_vocab_size:
            raise UserError("a RoBERTa-style encoder needs type_vocab_size >= 1 to export")
        return "roberta"
    if c.type_vocab_size:
        return "bert"
    if c.norm_eps != 1e-12 or (c.pooler and c.pooler_activation != "relu"):
        raise UserError("an encoder without token types exports as DistilBERT, which needs norm_eps=1e-12 "
                        "and a ReLU pooler")
    return "distilbert"


# -- long encoders: Longformer, BigBird (BERT-shaped, sparse self-attention) -------------------

LONG_HEADS = {"Model": "none", "ForMaskedLM": "mlm", "ForSequenceClassification": "classification"}
_LONGFORMER_GLOBALS = {f"self_attn.{p}_global": f"attention.self.{n}_global" for p, n in
                       (("q", "query"), ("k", "key"), ("v", "value"))}


def long_encoder_keymap(c, prefix: str, layer: dict, mlm: tuple, ignore: tuple) -> KeyMap:
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
    return KeyMap(rules, ignore=(_POSITION_IDS, r"([a-z]+\.)?pooler\.(dense\.)?(weight|bias)", *ignore))


def longformer_keymap(c: LongformerConfig, prefix: str) -> KeyMap:
    return long_encoder_keymap(c, prefix, {**_BERT_LAYER, **_LONGFORMER_GLOBALS},
                               ("lm_head.dense", "lm_head.layer_norm", "lm_head.decoder.weight", "lm_head.bias"),
                               ignore=(r"lm_head\.decoder\.bias",))  # a tied copy of the output bias


def bigbird_keymap(c: BigBirdConfig, prefix: str) -> KeyMap:
    return long_encoder_keymap(c, prefix, _BERT_LAYER, ("cls.predictions.transform.dense",
                               "cls.predictions.transform.LayerNorm", "cls.predictions.decoder.weight",
                               "cls.predictions.bias"), ignore=(r"cls\.predictions\.decoder\.bias",))


def _long_encoder_fields(hf: dict, head: str) -> dict:
    pad = hf.get("pad_token_id")
    return dict(vocab_size=hf["vocab_size"], max_positions=hf["max_position_embeddings"],
                n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"], d_model=hf["hidden_size"],
                ffn_hidden=hf["intermediate_size"], type_vocab_size=hf.get("type_vocab_size", 1),
                activation=_activation(hf.get("hidden_act", "gelu")), norm_eps=hf.get("layer_norm_eps", 1e-12),
                dropout=hf.get("hidden_dropout_prob", 0.1), attn_dropout=hf.get("attention_probs_dropout_prob", 0.1),
                pad_token_id=0 if pad is None else pad, head=head, n_labels=_labels(hf))


def _long_encoder_to_hf(model_type: str, c) -> dict:
    return {"model_type": model_type, "vocab_size": c.vocab_size, "max_position_embeddings": c.max_positions,
            "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head, "hidden_size": c.d_model,
            "intermediate_size": c.ffn_size, "type_vocab_size": c.type_vocab_size,
            "hidden_act": _activation_to_hf(c.activation), "layer_norm_eps": c.norm_eps,
            "hidden_dropout_prob": c.dropout, "attention_probs_dropout_prob": c.attn_dropout,
            "pad_token_id": c.pad_token_id, "tie_word_embeddings": True, **_label_fields(c.n_labels)}


def _longformer_config_from_hf(hf: dict, head: str, keys) -> LongformerConfig:
    windows = hf.get("attention_window", 512)
    windows = [windows] if isinstance(windows, int) else list(windows)
    if len(set(windows)) != 1:
        raise UserError(f"Longformer with a different attention_window per layer ({windows}) is not supported")
    return LongformerConfig(**_long_encoder_fields(hf, head), attention_window=windows[0])


def _longformer_config_to_hf(c: LongformerConfig) -> dict:
    if c.dilation != 1:
        raise UserError("a dilated Longformer has no Hugging Face equivalent; export needs dilation=1")
    return {**_long_encoder_to_hf("longformer", c), "attention_window": [c.attention_window] * c.n_layer}


def _bigbird_config_from_hf(hf: dict, head: str, keys) -> BigBirdConfig:
    for field, supported in (("attention_type", "block_sparse"), ("use_bias", True), ("rescale_embeddings", False),
                             ("position_embedding_type", "absolute")):
        if hf.get(field, supported) != supported:
            raise UserError(f"BigBird with {field}={hf[field]!r} is not supported; attnlab imports "
                            f"{field}={supported!r}")
    config = BigBirdConfig(**_long_encoder_fields(hf, head), block_size=hf.get("block_size", 64),
                           n_random_blocks=hf.get("num_random_blocks", 3))
    _check_bigbird_classifier(config)
    return config


def _bigbird_config_to_hf(c: BigBirdConfig) -> dict:
    _check_bigbird_classifier(c)
    return {**_long_encoder_to_hf("big_bird", c), "attention_type": "block_sparse", "block_size": c.block_size,
            "num_random_blocks": c.n_random_blocks}


def _check_bigbird_classifier(c: BigBirdConfig):
    """Their classification head uses hidden_act; ours is fixed to GELU (tanh)."""
    if c.head == "classification" and c.activation != "gelu_tanh":
        raise UserError("a BigBird classifier needs hidden_act gelu_new (activation gelu_tanh)")


# -- GPT-2 ----------------------------------------------------------------------------------

def gpt2_keymap(c: GPTConfig, prefix: str) -> KeyMap:
    rules = [rename("tok_emb.weight", f"{prefix}wte.weight"), rename("pos_emb.weight", f"{prefix}wpe.weight"),
             *affine("norm_f", f"{prefix}ln_f"), rename("lm_head.weight", "lm_head.weight", optional=c.tie_weights)]
    for i in range(c.n_layer):
        ours, theirs = f"blocks.{i}.", f"{prefix}h.{i}."
        rules += [*affine(ours + "norm_self", theirs + "ln_1"), *affine(ours + "norm_ffn", theirs + "ln_2"),
                  *fused_qkv(*(ours + f"self_attn.{p}_proj" for p in "qkv"), theirs + "attn.c_attn"),
                  *transposed(ours + "self_attn.out_proj", theirs + "attn.c_proj"),
                  *transposed(ours + "ffn.up", theirs + "mlp.c_fc"),
                  *transposed(ours + "ffn.down", theirs + "mlp.c_proj")]
    return KeyMap(rules, ignore=(r"(transformer\.)?h\.\d+\.attn\.(masked_)?bias",))


def _gpt2_config_from_hf(hf: dict, head: str, keys) -> GPTConfig:
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
        if hf.get(flag):
            raise UserError(f"GPT-2 with {flag}=true is not supported")
    if hf.get("scale_attn_weights", True) is False:
        raise UserError("GPT-2 with scale_attn_weights=false is not supported")
    return GPTConfig(vocab_size=hf["vocab_size"], block_size=hf["n_positions"], n_layer=hf["n_layer"],
                     n_head=hf["n_head"], d_model=hf["n_embd"], ffn_hidden=hf.get("n_inner"),
                     dropout=hf.get("resid_pdrop", 0.1), bias=True, norm="layernorm",
                     norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                     activation=_activation(hf.get("activation_function", "gelu_new")), position="learned",
                     tie_weights=hf.get("tie_word_embeddings", True))


def _gpt2_config_to_hf(c: GPTConfig) -> dict:
    shape = (c.position, c.norm, c.bias, c.n_kv_head or c.n_head)
    if shape != ("learned", "layernorm", True, c.n_head) or c.activation not in ACT_TO_HF:
        raise UserError("only a GPT-2-shaped GPT exports (learned positions, LayerNorm, biases, plain GELU/ReLU "
                        "feed-forward, no grouped-query attention)")
    return {"model_type": "gpt2", "vocab_size": c.vocab_size, "n_positions": c.block_size, "n_embd": c.d_model,
            "n_layer": c.n_layer, "n_head": c.n_head, "n_inner": c.ffn_hidden,
            "activation_function": _activation_to_hf(c.activation), "resid_pdrop": c.dropout, "embd_pdrop": c.dropout,
            "attn_pdrop": c.dropout, "layer_norm_epsilon": c.norm_eps, "tie_word_embeddings": c.tie_weights,
            "bos_token_id": None, "eos_token_id": None}


def _prefix_in(keys, prefix: str) -> str:
    return prefix if any(k.startswith(prefix) for k in keys) else ""


FAMILIES = {
    "bert": Family("bert", "Bert", "bert.", _encoder_config_from_hf("bert"), _encoder_config_to_hf("bert"),
                   lambda c, p: encoder_keymap("bert", c, p)),
    "roberta": Family("roberta", "Roberta", "roberta.", _encoder_config_from_hf("roberta"),
                      _encoder_config_to_hf("roberta"), lambda c, p: encoder_keymap("roberta", c, p),
                      heads={k: v for k, v in HEAD_SUFFIXES.items() if v != "pretraining"}),
    "distilbert": Family("distilbert", "DistilBert", "distilbert.", _encoder_config_from_hf("distilbert"),
                         _encoder_config_to_hf("distilbert"), lambda c, p: encoder_keymap("distilbert", c, p),
                         heads={k: v for k, v in HEAD_SUFFIXES.items() if v != "pretraining"}),
    "gpt2": Family("gpt2", "GPT2", "transformer.", _gpt2_config_from_hf, _gpt2_config_to_hf, gpt2_keymap,
                   heads={"Model": "lm", "LMHeadModel": "lm"}),
    "t5": Family("t5", "T5", "", t5.config_from_hf, t5.config_to_hf, t5.keymap,
                 heads={"ForConditionalGeneration": "lm"}),
    "marian": Family("marian", "Marian", "model.", marian.config_from_hf, marian.config_to_hf, marian.keymap,
                     heads={"MTModel": "lm"}),
    "longformer": Family("longformer", "Longformer", "longformer.", _longformer_config_from_hf,
                         _longformer_config_to_hf, longformer_keymap, heads=dict(LONG_HEADS)),
    "big_bird": Family("big_bird", "BigBird", "bert.", _bigbird_config_from_hf, _bigbird_config_to_hf,
                       bigbird_keymap, heads=dict(LONG_HEADS)),
    "reformer": Family("reformer", "Reformer", "reformer.", reformer.config_from_hf, reformer.config_to_hf,
                       reformer.keymap, heads={"ModelWithLMHead": "lm"}),
}

# our config family -> (config -> the Hugging Face model_type it exports as)
EXPORTS = {"gpt": lambda c: "gpt2", "bert": encoder_model_type, "t5": lambda c: "t5",
           "transformer": lambda c: "marian", "reformer": lambda c: "reformer",
           "longformer": lambda c: "longformer", "bigbird": lambda c: "big_bird"}


def family_for_export(config) -> Family:
    if config.family not in EXPORTS:
        raise UserError(f"{config.family} models have no Hugging Face export; attnlab exports {', '.join(EXPORTS)}")
    return FAMILIES[EXPORTS[config.family](config)]
