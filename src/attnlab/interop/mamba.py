"""Hugging Face Mamba (MambaModel, MambaForCausalLM) <-> our Mamba.

Mamba-1 only: Mamba2 (the SSD form, scalar decay per head) is not built here. The mixer's tensors
keep Hugging Face's names, so the map is a prefix change; hybrids and the non-selective ablation
have no Hugging Face counterpart and refuse to export in one line.
"""

from ..errors import UserError
from ..models.mamba import MambaConfig
from .keymap import KeyMap, rename
from .registry import HFModelType, HFSpec, register_hf

MIXER = ("in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight", "dt_proj.bias",
         "A_log", "D", "out_proj.weight")
BIASES = ("in_proj.bias", "out_proj.bias")
DEFAULT_CONTEXT = 2048  # Hugging Face's config has no context length; the SSM itself has no limit


def keymap(c: MambaConfig, prefix: str) -> KeyMap:
    rules = [rename("embedding.weight", f"{prefix}embeddings.weight"),
             rename("norm_f.weight", f"{prefix}norm_f.weight"),
             rename("lm_head.weight", "lm_head.weight", optional=c.tie_weights)]
    tensors = MIXER + (BIASES if c.bias else ())
    tensors = [t for t in tensors if c.conv_bias or t != "conv1d.bias"]
    for i in range(c.n_layer):
        rules.append(rename(f"blocks.{i}.norm.weight", f"{prefix}layers.{i}.norm.weight"))
        rules += [rename(f"blocks.{i}.mixer.{t}", f"{prefix}layers.{i}.mixer.{t}") for t in tensors]
    return KeyMap(rules)


def config_from_hf(hf: dict, head: str, keys) -> MambaConfig:
    if hf.get("hidden_act", "silu") not in ("silu", "swish"):
        raise UserError(f"Mamba with hidden_act={hf['hidden_act']!r} is not supported (attnlab's uses silu)")
    hidden = hf["hidden_size"]
    rank = hf.get("time_step_rank", "auto")
    return MambaConfig(vocab_size=hf["vocab_size"], max_seq_len=DEFAULT_CONTEXT, n_layer=hf["num_hidden_layers"],
                       d_model=hidden, d_state=hf.get("state_size", 16), d_conv=hf.get("conv_kernel", 4),
                       expand=hf.get("expand", 2), dt_rank=None if rank == "auto" else int(rank),
                       bias=hf.get("use_bias", False), conv_bias=hf.get("use_conv_bias", True),
                       norm_eps=hf.get("layer_norm_epsilon", 1e-5), residual_in_fp32=hf.get("residual_in_fp32", True),
                       tie_weights=hf.get("tie_word_embeddings", True))


def config_to_hf(c: MambaConfig) -> dict:
    if c.attn_layers:
        raise UserError("a hybrid Mamba (attn_layers) has no Hugging Face MambaForCausalLM equivalent")
    if not c.selective:
        raise UserError("the non-selective Mamba ablation (selective=false) has no Hugging Face equivalent")
    return {"model_type": "mamba", "vocab_size": c.vocab_size, "hidden_size": c.d_model, "state_size": c.d_state,
            "num_hidden_layers": c.n_layer, "layer_norm_epsilon": c.norm_eps, "expand": c.expand,
            "conv_kernel": c.d_conv, "use_bias": c.bias, "use_conv_bias": c.conv_bias, "hidden_act": "silu",
            "residual_in_fp32": c.residual_in_fp32, "time_step_rank": c.dt_rank or -(-c.d_model // 16),
            "tie_word_embeddings": c.tie_weights, "pad_token_id": None, "bos_token_id": None, "eos_token_id": None}


SPEC = register_hf(HFSpec("mamba", (HFModelType("mamba", "Mamba", "backbone.", config_from_hf, config_to_hf, keymap,
                                                {"Model": "lm", "ForCausalLM": "lm"}),)))
