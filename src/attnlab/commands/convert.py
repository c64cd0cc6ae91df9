"""convert: import a Hugging Face checkpoint into attnlab, or export one back; any family with a
Hugging Face spec (interop/registry.py) converts."""

from pathlib import Path

from ..checkpoint import load_checkpoint, read_config, save_checkpoint
from ..errors import UserError
from ..interop import export_hf, import_hf, minilm_path
from ..interop.registry import HF_SPECS, hf_spec_for
from .common import output_dir, print_json, resolve_checkpoint


def register(sub):
    p = sub.add_parser("convert", help="import a Hugging Face checkpoint into attnlab, or export one back")
    p.add_argument("direction", choices=("import", "export"))
    p.add_argument("source", help="import: a Hugging Face directory or 'minilm'; export: an attnlab checkpoint")
    p.add_argument("out", help="new output directory")
    p.set_defaults(run=convert)


def convert(args):
    out = output_dir(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not empty; choose a new output directory")
    if args.direction == "import":
        model, tokenizer = import_hf(minilm_path() if args.source == "minilm" else Path(args.source))
        save_checkpoint(out, model, tokenizer)
    else:
        model, tokenizer = load_checkpoint(exportable(args.source))
        export_hf(model, out, tokenizer)
    print_json({"direction": args.direction, "source": str(args.source), "out": str(out),
                "family": model.config.family, "parameters": model.num_parameters()})


def exportable(checkpoint) -> Path:
    """The checkpoint's path, or one line naming the families that convert."""
    path = resolve_checkpoint(checkpoint)
    family = read_config(path).family
    if hf_spec_for(family) is None:
        raise UserError(f"convert needs a family with a Hugging Face counterpart ({', '.join(sorted(HF_SPECS))}); "
                        f"{checkpoint} holds a {family} model")
    return path
