"""ONNX export: encoders and causal language models as ONNX graphs with dynamic batch and
length axes, for ONNX Runtime (`attnlab export CKPT --format onnx --out DIR`).

    encoder (bert)   in:  input_ids, attention_mask, token_type_ids (B, T)
                     out: logits (by head: (B, n_labels), (B, T, V), ...), hidden_states (B, T, C)
    causal LM (gpt)  in:  input_ids (B, T); attention_mask (B, P + T) over the past and the new
                          tokens (left padding allowed); past_key.i, past_value.i (B, H_kv, P, D)
                     out: logits (B, T, V); present_key.i, present_value.i (B, H_kv, P + T, D)

A decoder starts with P = 0 (empty past tensors) and feeds each step's presents back as the
next step's pasts, as a KV cache. The directory also gets an `onnx.json` naming the inputs and
outputs (and, from the verb, the tokenizer).

The graph is traced by torch.onnx's TorchScript exporter: it exports a tiny model in seconds where
the torch.export-based one took 30-60 s here (tests/test_onnx.py exports four). Tracing freezes
Python branches on shapes; the ones on this path are fixed by the config (grouped-query heads,
beam folding) or merely shortcuts (a single query needs no causal mask), and Bert.encode keeps
every column while tracing instead of cutting trailing padding.
"""

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from ..compression.quantize import QUANTIZED
from ..errors import UserError
from ..layers.decode_state import DecodeState
from ..models.base import family_spec

MODEL_FILE = "model.onnx"
OPSET = 18


class PastKeyValues(DecodeState):
    """A KV cache as graph inputs and outputs: each layer's past keys and values (B, H, P, D) are
    joined to the new ones, which the model returns as its presents (B, H, P + T, D)."""

    def __init__(self, past: list, mask: torch.Tensor):
        self.past, self.present, self.mask = past, [], mask  # mask (B, P)

    def begin(self, new_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.mask, attention_mask.long()], dim=1)  # (B, P + T): the graph takes a mask

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        past_k, past_v = self.past[layer]
        self.present.append((torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)))
        return self.present[-1]


class EncoderGraph(nn.Module):
    """model(**inputs) -> the tensors named `outputs` of its ModelOutput."""

    def __init__(self, model, inputs: list, outputs: list):
        super().__init__()
        self.model, self.inputs, self.outputs = model, inputs, outputs

    def forward(self, *tensors):
        out = self.model(**dict(zip(self.inputs, tensors)))
        return tuple(getattr(out, name) for name in self.outputs)


class DecoderGraph(nn.Module):
    """(input_ids, attention_mask, past_key.0, past_value.0, ...) -> (logits, present_key.0, ...)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, *past):
        n_past = past[0].size(2)
        cache = PastKeyValues(list(zip(past[0::2], past[1::2])), attention_mask[:, :n_past])
        logits = self.model(input_ids, attention_mask=attention_mask[:, n_past:], state=cache).logits
        return (logits, *(t for kv in cache.present for t in kv))


def exportable(model):
    """Nothing if the model exports to ONNX, else one line naming what does."""
    family = model.config.family
    if family not in EXPORTERS or getattr(model.config, "attn_window", None) is not None:
        raise UserError(f"ONNX export covers the {' and '.join(sorted(EXPORTERS))} families (without sliding-window "
                        f"attention); this checkpoint holds a {family} model")
    if any(isinstance(m, QUANTIZED) for m in model.modules()):
        raise UserError("ONNX export needs a float model; export the checkpoint before `attnlab compress` "
                        "quantises it (ONNX Runtime quantises graphs itself)")


def export_onnx(model, directory) -> dict:
    """Write `directory`/model.onnx and onnx.json -> the description written to onnx.json."""
    exportable(model)
    model = model.eval()
    graph, args, names, dynamic = EXPORTERS[model.config.family](model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the frozen branches above
        warnings.simplefilter("ignore", DeprecationWarning)  # the exporter's own, see above
        torch.onnx.export(graph.eval(), args, directory / MODEL_FILE, input_names=names["inputs"],
                          output_names=names["outputs"], dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
    description = {"family": model.config.family, "kind": family_spec(model).kind, "opset": OPSET, **names}
    (directory / "onnx.json").write_text(json.dumps(description, indent=2) + "\n")
    return description


def _encoder(model):
    c = model.config
    inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if c.type_vocab_size else [])
    ids = torch.full((2, 8), c.pad_token_id + 1, dtype=torch.long)
    args = (ids, torch.ones_like(ids), torch.zeros_like(ids))[:len(inputs)]
    outputs = (["logits"] if c.head != "none" else []) + ["hidden_states"]
    per_token = {0: "batch", 1: "length"}
    dynamic = {**{name: per_token for name in inputs}, "hidden_states": per_token,
               "logits": {0: "batch"} if c.head == "sequence" else per_token}
    dynamic = {name: axes for name, axes in dynamic.items() if name in inputs + outputs}
    return EncoderGraph(model, inputs, outputs), args, {"inputs": inputs, "outputs": outputs}, dynamic


def _decoder(model):
    c = model.config
    n_kv, head_dim = c.n_kv_head or c.n_head, c.d_model // c.n_head
    ids = torch.zeros(2, 3, dtype=torch.long)
    past = [torch.zeros(2, n_kv, 4, head_dim) for _ in range(2 * c.n_layer)]
    kv_names = [f"{kind}.{i}" for i in range(c.n_layer) for kind in ("key", "value")]
    names = {"inputs": ["input_ids", "attention_mask"] + [f"past_{n}" for n in kv_names],
             "outputs": ["logits"] + [f"present_{n}" for n in kv_names]}
    dynamic = {"input_ids": {0: "batch", 1: "length"}, "logits": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "past + length"},
               **{n: {0: "batch", 2: "past"} for n in names["inputs"][2:]},
               **{n: {0: "batch", 2: "past + length"} for n in names["outputs"][1:]}}
    return DecoderGraph(model), (ids, torch.ones(2, 7, dtype=torch.long), *past), names, dynamic


EXPORTERS = {"bert": _encoder, "gpt": _decoder}
