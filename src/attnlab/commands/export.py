"""export: an attnlab checkpoint as an ONNX graph for ONNX Runtime (encoders with their heads, causal
LMs with KV-cache inputs and outputs; see interop/onnx.py). Hugging Face export is `convert export`."""

from ..checkpoint import load_checkpoint
from ..interop.onnx import export_onnx, exportable
from .common import FORCE_HELP, fresh_output, print_json, resolve_checkpoint


def register(sub):
    p = sub.add_parser("export", help="write a checkpoint as an ONNX graph (dynamic batch and length) for ONNX Runtime")
    p.add_argument("checkpoint", help="an attnlab checkpoint or run directory")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="the graph format (default onnx)")
    p.add_argument("--out", required=True, help="output directory: model.onnx, onnx.json and the tokenizer")
    p.add_argument("--force", action="store_true", help=FORCE_HELP)
    p.set_defaults(run=export)


def export(args):
    model, processor = load_checkpoint(resolve_checkpoint(args.checkpoint))
    exportable(model)  # refuse before anything is written
    with fresh_output(args.out, "export", args.force) as out:
        description = export_onnx(model, out)
        if processor is not None:
            processor.save(out)
    print_json({"checkpoint": str(args.checkpoint), "out": str(args.out), **description})
