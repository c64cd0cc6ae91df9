"""Hugging Face BERT, RoBERTa and DistilBERT <-> our Bert, whose config fields carry the differences.

Each encoder head maps to one architecture class (BertForMaskedLM, RobertaForSequenceClassification,
...); an export writes the model type the config's shape calls for (`encoder_model_type`).
"""

import dataclasses

from ..errors import UserError
from ..models.bert import BertConfig
from .common import BERT_LAYER, POSITION_IDS, activation, activation_to_hf, labels_from_hf, labels_to_hf, prefix_in
from .keymap import KeyMap, affine, rename
from .registry import HFModelType, HFSpec, register_hf

# architecture class suffix <-> our encoder head
HEADS = {"Model": "none", "ForMaskedLM": "mlm", "ForPreTraining": "pretraining",
         "ForSequenceClassification": "sequence", "ForTokenClassification": "token", "ForQuestionAnswering": "qa"}
HEADS_WITHOUT_PRETRAINING = {k: v for k, v in HEADS.items() if v != "pretraining"}


@dataclasses.dataclass(frozen=True)
class EncoderNames:
    layers: str  # where the blocks live, under the base prefix
    layer: dict  # our block sub-module -> theirs
    pooler: dict  # head -> their pooler (a [CLS] Linear), with "{p}" for the base prefix
    mlm: tuple  # their (transform, norm, decoder weight, output bias)
    classifier: dict  # head -> their final Linear
    ignore: tuple  # their keys that carry no weights


_DISTILBERT_LAYER = {"self_attn.q_proj": "attention.q_lin", "self_attn.k_proj": "attention.k_lin",
                     "self_attn.v_proj": "attention.v_lin", "self_attn.out_proj": "attention.out_lin",
                     "norm_self": "sa_layer_norm", "ffn.up": "ffn.lin1", "ffn.down": "ffn.lin2",
                     "norm_ffn": "output_layer_norm"}

ENCODER_NAMES = {
    "bert": EncoderNames(
        layers="encoder.layer", layer=BERT_LAYER,
        pooler={"none": "{p}pooler.dense", "sequence": "{p}pooler.dense", "pretraining": "{p}pooler.dense"},
        mlm=("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm",
             "cls.predictions.decoder.weight", "cls.predictions.bias"),
        classifier={"sequence": "classifier", "token": "classifier", "qa": "qa_outputs",
                    "pretraining": "cls.seq_relationship"},
        ignore=(POSITION_IDS, r"cls\.predictions\.decoder\.bias")),
    "roberta": EncoderNames(
        layers="encoder.layer", layer=BERT_LAYER,
        pooler={"none": "{p}pooler.dense", "sequence": "classifier.dense"},
        mlm=("lm_head.dense", "lm_head.layer_norm", "lm_head.decoder.weight", "lm_head.bias"),
        classifier={"sequence": "classifier.out_proj", "token": "classifier", "qa": "qa_outputs"},
        ignore=(POSITION_IDS, r"lm_head\.decoder\.bias")),
    "distilbert": EncoderNames(
        layers="transformer.layer", layer=_DISTILBERT_LAYER,
        pooler={"sequence": "pre_classifier"},
        mlm=("vocab_transform", "vocab_layer_norm", "vocab_projector.weight", "vocab_projector.bias"),
        classifier={"sequence": "classifier", "token": "classifier", "qa": "qa_outputs"},
        ignore=(POSITION_IDS,)),
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


def _config_from_hf(model_type: str):
    def convert(hf: dict, head: str, keys) -> BertConfig:
        names = ENCODER_NAMES[model_type]
        prefix = prefix_in(keys, f"{model_type}.")
        has_pooler = head in names.pooler and names.pooler[head].format(p=prefix) + ".weight" in keys
        if model_type == "distilbert":
            if hf.get("sinusoidal_pos_embds"):
                raise UserError("DistilBERT with sinusoidal_pos_embds is not supported; use learned positions")
            fields = dict(vocab_size=hf["vocab_size"], max_positions=hf["max_position_embeddings"],
                          n_layer=hf["n_layers"], n_head=hf["n_heads"], d_model=hf["dim"], ffn_hidden=hf["hidden_dim"],
                          type_vocab_size=0, activation=activation(hf.get("activation", "gelu")), norm_eps=1e-12,
                          dropout=hf.get("dropout", 0.1), attn_dropout=hf.get("attention_dropout", 0.1),
                          pooler_activation="relu")
        else:
            if hf.get("position_embedding_type", "absolute") != "absolute":
                raise UserError(f"position_embedding_type {hf['position_embedding_type']!r} is not supported; "
                                "attnlab imports absolute positions")
            fields = dict(vocab_size=hf["vocab_size"], max_positions=hf["max_position_embeddings"],
                          n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"], d_model=hf["hidden_size"],
                          ffn_hidden=hf["intermediate_size"], type_vocab_size=hf.get("type_vocab_size", 2),
                          activation=activation(hf.get("hidden_act", "gelu")),
                          norm_eps=hf.get("layer_norm_eps", 1e-12), dropout=hf.get("hidden_dropout_prob", 0.1),
                          attn_dropout=hf.get("attention_probs_dropout_prob", 0.1),
                          position_style="roberta" if model_type == "roberta" else "absolute")
            if model_type == "roberta" and head in ("mlm", "pretraining") and fields["activation"] != "gelu":
                raise UserError("RoBERTa's LM head always uses GELU; a non-GELU hidden_act is not supported with it")
        pad = hf.get("pad_token_id")
        return BertConfig(**fields, pad_token_id=0 if pad is None else pad, pooler=has_pooler, head=head,
                          tie_weights=hf.get("tie_word_embeddings", True), **labels_from_hf(hf))
    return convert


def _config_to_hf(model_type: str):
    def convert(c: BertConfig) -> dict:
        if c.pooling != "cls":
            raise UserError(f"pooling={c.pooling!r} has no Hugging Face equivalent (its heads read [CLS]); "
                            "only pooling='cls' encoders export")
        common = {"model_type": model_type, "vocab_size": c.vocab_size, "max_position_embeddings": c.max_positions,
                  "pad_token_id": c.pad_token_id, "tie_word_embeddings": c.tie_weights,
                  **labels_to_hf(c)}
        if model_type == "distilbert":
            return {**common, "n_layers": c.n_layer, "n_heads": c.n_head, "dim": c.d_model, "hidden_dim": c.ffn_size,
                    "activation": activation_to_hf(c.activation), "dropout": c.dropout,
                    "attention_dropout": c.attn_dropout, "sinusoidal_pos_embds": False}
        return {**common, "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head, "hidden_size": c.d_model,
                "intermediate_size": c.ffn_size, "type_vocab_size": c.type_vocab_size,
                "hidden_act": activation_to_hf(c.activation), "layer_norm_eps": c.norm_eps,
                "hidden_dropout_prob": c.dropout, "attention_probs_dropout_prob": c.attn_dropout,
                "position_embedding_type": "absolute"}
    return convert


def encoder_model_type(c: BertConfig) -> str:
    """Which Hugging Face model type an attnlab encoder exports as."""
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


def _model_type(model_type: str, class_prefix: str, heads: dict) -> HFModelType:
    return HFModelType(model_type, class_prefix, f"{model_type}.", _config_from_hf(model_type),
                       _config_to_hf(model_type), lambda c, p: encoder_keymap(model_type, c, p), heads)


SPEC = register_hf(HFSpec("bert", (_model_type("bert", "Bert", HEADS),
                                   _model_type("roberta", "Roberta", HEADS_WITHOUT_PRETRAINING),
                                   _model_type("distilbert", "DistilBert", HEADS_WITHOUT_PRETRAINING)),
                          export_type=encoder_model_type))
