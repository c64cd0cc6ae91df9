"""The attention viewer: one input through a model, every layer's and head's attention weights, as one
self-contained HTML page (head view and model view; its own inline script, nothing fetched) or as PNG
heatmaps.

The page embeds each attention stack (encoder self-attention, decoder self-attention, cross-attention)
as its (L, H, Tq, Tk) weights quantised to uint8 (1/255 steps), deflated and base64-encoded; the
browser inflates them with its built-in DecompressionStream. A 512-token, 12-layer, 12-head encoder
fits in a few MB (benchmarks/attention_viewer.py).
"""

import base64
import dataclasses
import html
import json
import zlib
from importlib import resources
from pathlib import Path

import torch

from ..data.seq2seq import encode_source
from ..errors import UserError
from ..models.base import CLASSIFIER, DUAL_ENCODER, ENCODER, SEQ2SEQ, family_spec
from .attention_maps import STACKS, attention_maps, refuse_without_weights

STACK_LABELS = {"encoder": "encoder self-attention", "decoder": "decoder self-attention", "cross": "cross-attention"}
# Which token sequence a stack's queries and keys are.
SIDES = {"encoder": ("encoder", "encoder"), "decoder": ("decoder", "decoder"), "cross": ("decoder", "encoder")}


@dataclasses.dataclass
class AttentionView:
    title: str
    tokens: dict  # side ("encoder" / "decoder") -> [str], one per position
    maps: list  # [AttentionMap] over one input: weights (1, H, Tq, Tk)
    segments: dict = dataclasses.field(default_factory=dict)  # side -> [0 or 1] per token: sentence A or B

    def stacks(self) -> dict:
        """stack name -> its weights (L, H, Tq, Tk), in STACKS order."""
        by_stack = {}
        for m in self.maps:
            by_stack.setdefault(m.stack, []).append(m.weights[0])
        return {name: torch.stack(by_stack[name]) for name in STACKS if name in by_stack}


def view_attention(model, processor, *, text: str = None, text_pair: str = None, source: str = None,
                   target: str = None, media=None, title: str = "") -> AttentionView:
    """One input of the kind the model reads -> its AttentionView: a text (and a second sentence for an
    encoder), a source and target for a seq2seq model, a media item (as its processor reads it) for a
    classifier, and a text or an image for a dual encoder (the tower it is for). One line for an input
    the model cannot take."""
    refuse_without_weights(model)
    spec = family_spec(model)
    if spec.kind != ENCODER and text_pair is not None:
        raise UserError(f"sentence pairs are for encoders; this {spec.name} model is {spec.kind.replace('_', ' ')}")
    if spec.kind == SEQ2SEQ:
        batch, tokens = _seq2seq_input(model, processor, source, target)
    elif spec.kind == DUAL_ENCODER:
        if media is not None:
            batch, tokens = processor([media]), None
        else:
            batch, tokens = _text_input(model, processor.tokenizer, spec, text, None)
            tokens = {"encoder": tokens["decoder"]}  # each tower's layers are recorded as one self-attention stack
    elif spec.kind == CLASSIFIER:
        if media is None:
            raise UserError(f"a {spec.name} model reads {spec.modality}: give one file (--image FILE; server: POST a "
                            "base64 file)")
        batch = processor([media])
        tokens = None  # named after the run, once the token count is known
    else:  # an encoder or a causal LM (graph networks have no attention weights)
        batch, tokens = _text_input(model, processor, spec, text, text_pair)
    maps = attention_maps(model, batch)
    if tokens is None:
        tokens = {"encoder": [f"#{i}" for i in range(maps[0].weights.size(-1))]}
    segments = {}
    if text_pair is not None:
        segments["encoder"] = batch["token_type_ids"][0].tolist()
    _check_shapes(spec.name, maps, tokens)
    return AttentionView(title or spec.name, tokens, maps, segments)


def _need(value, what: str):
    if not value:
        raise UserError(f"give {what}")
    return value


def _text_input(model, tokenizer, spec, text, text_pair):
    text = _need(text, f"the text to look at (--text; server: text=) for this {spec.name} model")
    if tokenizer is None:
        raise UserError("the checkpoint has no tokenizer; the viewer needs one to name the tokens")
    subword = hasattr(tokenizer, "batch_encode")  # its batcher adds no padding a tokenizer file may ask for
    if text_pair is not None and not subword:
        raise UserError("sentence pairs need a subword tokenizer (tokenizer.json) that marks them")
    encoded = tokenizer.batch_encode([text], pairs=None if text_pair is None else [text_pair]) if subword else {
        "input_ids": torch.tensor([tokenizer.encode(text)])}
    batch = {"input_ids": encoded["input_ids"]}  # (1, T)
    if text_pair is not None:
        batch["token_type_ids"] = encoded["token_type_ids"]
    if batch["input_ids"].size(1) > model.config.max_seq_len:
        raise UserError(f"the input is {batch['input_ids'].size(1)} tokens; this model reads at most "
                        f"{model.config.max_seq_len}")
    return batch, {"encoder" if spec.kind == ENCODER else "decoder": _spell(tokenizer, batch["input_ids"][0])}


def _seq2seq_input(model, tokenizers, source, target):
    """A source and the target it is paired with: the decoder reads the target shifted right
    (decoder start first), as in training."""
    source = _need(source, "a source and its target (--source and --target; server: source= and target=) for a "
                           "seq2seq model")
    target = _need(target, "the target the decoder reads beside the source (--target; server: target=)")
    c = model.config
    source_ids = encode_source(tokenizers, source, c.eos_id)
    labels = tokenizers.target.encode(target) + [c.eos_id]
    if len(source_ids) > c.max_seq_len or len(labels) > c.max_seq_len:
        raise UserError(f"source and target must each be at most {c.max_seq_len} tokens with </s>")
    decoder_ids = [c.decoder_start_id] + labels[:-1]
    batch = {"input_ids": torch.tensor([source_ids]), "labels": torch.tensor([labels])}
    return batch, {"encoder": _spell(tokenizers.source, source_ids), "decoder": _spell(tokenizers.target, decoder_ids)}


def _spell(tokenizer, ids) -> list:
    return [tokenizer.token(int(i)) for i in ids]


def _check_shapes(family: str, maps: list, tokens: dict):
    """Every map covers the whole input once: models that attend over parts of it at a time (XL
    segments, divided space-time attention) are refused."""
    for m in maps:
        query, key = SIDES[m.stack]
        want = (1, len(tokens[query]), len(tokens[key]))
        got = (m.weights.size(0), *m.weights.shape[-2:])
        if got != want:
            raise UserError(f"this {family} model attends over parts of the input at a time ({m.stack} layer "
                            f"{m.layer} gives {got[0]} maps of {got[1]}x{got[2]} for {want[1]} tokens); "
                            "shorten the input to one segment or use joint attention")


def quantised(weights: torch.Tensor) -> bytes:
    """(L, H, Tq, Tk) weights in [0, 1] -> their uint8 steps of 1/255, deflated."""
    steps = (weights.clamp(0, 1) * 255).round().to(torch.uint8)
    return zlib.compress(steps.numpy().tobytes(), 6)


def render_html(view: AttentionView) -> str:
    """The whole page: the template with the view's tokens and quantised weights inlined."""
    stacks = [{"name": name, "label": STACK_LABELS[name], "query": SIDES[name][0], "key": SIDES[name][1],
               "layers": w.size(0), "heads": w.size(1), "data": base64.b64encode(quantised(w)).decode("ascii")}
              for name, w in view.stacks().items()]
    data = json.dumps({"tokens": view.tokens, "segments": view.segments, "stacks": stacks}, ensure_ascii=False)
    template = resources.files(__package__).joinpath("attention_view.html").read_text(encoding="utf-8")
    # "</" could end the <script> element early; JSON allows "<\/" for it.
    return template.replace("__TITLE__", html.escape(view.title)).replace("__DATA__", data.replace("</", "<\\/"))


def save_heatmaps(view: AttentionView, directory) -> list:
    """One PNG per stack and layer, its heads four to a row (query rows, key columns), token labels
    when there are few enough to read -> the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, weights in view.stacks().items():
        query, key = (view.tokens[side] for side in SIDES[name])
        for layer, heads in enumerate(weights):  # heads (H, Tq, Tk)
            columns = min(len(heads), 4)
            rows = -(-len(heads) // columns)
            fig, axes = plt.subplots(rows, columns, figsize=(2.8 * columns + 0.4, 2.8 * rows + 0.4), squeeze=False)
            for head, ax in enumerate(axes.flat):
                if head >= len(heads):
                    ax.axis("off")
                    continue
                ax.imshow(heads[head].numpy(), cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
                ax.set_title(f"head {head}", fontsize=9)
                _ticks(ax, query, key)
            fig.suptitle(f"{view.title}: {STACK_LABELS[name]}, layer {layer}", fontsize=10)
            fig.tight_layout()
            path = directory / f"{name}-layer{layer}.png"
            fig.savefig(path, dpi=100)
            plt.close(fig)
            written.append(path)
    return written


def _ticks(ax, query: list, key: list, readable: int = 32):
    for tokens, set_ticks, set_labels, rotation in ((query, ax.set_yticks, ax.set_yticklabels, 0),
                                                    (key, ax.set_xticks, ax.set_xticklabels, 90)):
        if len(tokens) <= readable:
            set_ticks(range(len(tokens)))
            set_labels(tokens, fontsize=6, rotation=rotation)
        else:
            set_ticks([])

