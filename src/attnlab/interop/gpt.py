"""Hugging Face GPT-2 (GPT2Model, GPT2LMHeadModel) <-> our GPT in its GPT-2 shape."""

from ..errors import UserError
from ..models.gpt import GPTConfig
from .common import ACT_TO_HF, activation, activation_to_hf
from .keymap import KeyMap, affine, fused_qkv, rename, transposed
from .registry import HFModelType, HFSpec, register_hf


def keymap(c: GPTConfig, prefix: str) -> KeyMap:
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


def config_from_hf(hf: dict, head: str, keys) -> GPTConfig:
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
        if hf.get(flag):
            raise UserError(f"GPT-2 with {flag}=true is not supported")
    if hf.get("scale_attn_weights", True) is False:
        raise UserError("GPT-2 with scale_attn_weights=false is not supported")
    return GPTConfig(vocab_size=hf["vocab_size"], max_seq_len=hf["n_positions"], n_layer=hf["n_layer"],
                     n_head=hf["n_head"], d_model=hf["n_embd"], ffn_hidden=hf.get("n_inner"),
                     dropout=hf.get("resid_pdrop", 0.1), bias=True, norm="layernorm",
                     norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                     activation=activation(hf.get("activation_function", "gelu_new")), position="learned",
                     tie_weights=hf.get("tie_word_embeddings", True))


def gpt2_misfits(c: GPTConfig) -> list:
    """What keeps this GPT from GPT-2's shape, one phrase per failed requirement."""
    checks = [(c.position == "learned", f"positions are {c.position}, GPT-2 needs learned ones"),
              (c.norm == "layernorm", f"norm is {c.norm}, GPT-2 needs layernorm"),
              (c.bias, "it has no biases, GPT-2 needs them"),
              (c.activation in ACT_TO_HF, f"activation is {c.activation}, GPT-2 needs one of {', '.join(ACT_TO_HF)}"),
              ((c.n_kv_head or c.n_head) == c.n_head, "it uses grouped-query attention, GPT-2 does not")]
    return [problem for ok, problem in checks if not ok]


def config_to_hf(c: GPTConfig) -> dict:
    misfits = gpt2_misfits(c)
    if misfits:
        raise UserError(f"only a GPT-2-shaped GPT exports: {'; '.join(misfits)}")
    return {"model_type": "gpt2", "vocab_size": c.vocab_size, "n_positions": c.max_seq_len, "n_embd": c.d_model,
            "n_layer": c.n_layer, "n_head": c.n_head, "n_inner": c.ffn_hidden,
            "activation_function": activation_to_hf(c.activation), "resid_pdrop": c.dropout, "embd_pdrop": c.dropout,
            "attn_pdrop": c.dropout, "layer_norm_epsilon": c.norm_eps, "tie_word_embeddings": c.tie_weights,
            "bos_token_id": None, "eos_token_id": None}


SPEC = register_hf(HFSpec("gpt", (HFModelType("gpt2", "GPT2", "transformer.", config_from_hf, config_to_hf, keymap,
                                              {"Model": "lm", "LMHeadModel": "lm"}),)))
