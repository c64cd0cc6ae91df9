"""attention: where a model looks for one input, as one self-contained HTML page (head view and model
view of every layer and head) and optionally as PNG heatmaps."""

import os
import sys
from pathlib import Path

from ..checkpoint import load_checkpoint, read_config
from ..errors import UserError
from ..inference.attention_maps import refuse_without_weights
from ..inference.attention_view import render_html, save_heatmaps, view_attention
from .common import output_dir, resolve_checkpoint


def register(sub):
    p = sub.add_parser("attention", help="view a model's attention for one input: an HTML page (head view and "
                                         "model view) and optionally PNG heatmaps")
    p.add_argument("checkpoint")
    p.add_argument("--text", help="causal LMs, encoders and dual encoders: the text to look at")
    p.add_argument("--text-pair", help="encoders: a second sentence; the page can filter A->B, B->A, ...")
    p.add_argument("--source", help="seq2seq models: the source text")
    p.add_argument("--target", help="seq2seq models: the target text the decoder reads (teacher-forced)")
    p.add_argument("--image", "--media", dest="media", metavar="FILE",
                   help="image (or audio / video) classifiers and dual encoders: a file of the model's "
                                          "modality")
    p.add_argument("--out", default="attention.html", help="the HTML page to write (default: attention.html)")
    p.add_argument("--png", metavar="DIR", help="also write <stack>-layer<N>.png heatmaps (all heads) into DIR")
    p.set_defaults(run=attention)


def attention(args):
    out = Path(args.out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"--out {out} must end in .html")
    output_dir(out.parent)
    png = output_dir(args.png) if args.png else None
    path = resolve_checkpoint(args.checkpoint)
    refuse_without_weights(read_config(path))
    model, processor = load_checkpoint(path)
    media = None
    if args.media is not None:
        if not hasattr(processor, "read"):
            raise UserError(f"--image is for image, audio or video classifiers and dual encoders; {path} holds a "
                            f"{model.config.family} model")
        media = processor.read(args.media)
    view = view_attention(model, processor, text=args.text, text_pair=args.text_pair, source=args.source,
                          target=args.target, media=media, title=f"{model.config.family}: {path.name}")
    write_atomically(out, render_html(view))
    print(f"wrote {out} ({out.stat().st_size / 2 ** 20:.1f} MB)", file=sys.stderr)
    if png is not None:
        written = save_heatmaps(view, png)
        print(f"wrote {len(written)} heatmaps into {png}", file=sys.stderr)


def write_atomically(path: Path, text: str):
    """The page under a temporary name, then renamed: a failed write leaves any earlier page whole."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
