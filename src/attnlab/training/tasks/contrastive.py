"""The `contrastive` task: a dual encoder (CLIP) trained on image-caption pairs with in-batch negatives.

    task: contrastive
    model: {preset: clip-mnist}                    # or clip-mnist-lit: the pretrained all-MiniLM-L6-v2
                                                   # as a frozen text tower (LiT); freeze: vision|text;
                                                   # embed_chunk: N for GradCache
    tokenizer: {kind: wordpiece, vocab_size: 256, image: {shift: 2}}   # the caption tokenizer trained
                                                   # on the training captions and hard negatives
                                                   # (none with MiniLM, whose own is used), and the
                                                   # image processor's settings
    data: {path: pairs.jsonl, val_fraction: 0.1, seed: 0, augment: false}   # or val_path

The data is a JSONL file of {"image": path relative to the file, "text": caption} (and optionally
"hard_negative": a wrong caption the image must rank below its own), or a folder holding pairs.jsonl
(data/pairs.py). Each evaluation logs the validation split's recall@1 both ways beside
val_loss. A batch's other pairs are each pair's negatives, so train.grad_accum (separate
micro-batches, separate losses) is refused: model.embed_chunk gives the same gradient as one big
batch with the memory of a chunk. Under torchrun each process's negatives are its own rows (no
gathering of embeddings across processes).
"""

import dataclasses
from pathlib import Path

from ...checkpoint import load_checkpoint
from ...config import Config
from ...data.pairs import PairBatches, read_pairs, split_pairs
from ...errors import UserError
from ...interop import load_minilm
from ...models.base import DUAL_ENCODER, build_model, families_of_kind
from ...processors.clip import ClipProcessor
from ...processors.image import ImageProcessor
from ...tokenizers import train_tokenizer
from .base import Run, Task, model_config, require_path, require_val_fraction

END_OF_TEXT = "[SEP]"  # a trained WordPiece's texts end in it: the causal text tower pools there


@dataclasses.dataclass
class PairData(Config):
    section = "data"
    path: str = None  # JSONL of {"image", "text"}, or a folder holding pairs.jsonl
    val_path: str = None  # a separate validation set; None: a random val_fraction of path
    val_fraction: float = 0.1
    seed: int = 0  # of the validation split
    augment: bool = False  # the image processor's random shifts (rotations, ...) on training batches

    def validate(self):
        require_val_fraction(self)


@dataclasses.dataclass
class CaptionTokenizer(Config):
    section = "tokenizer"
    kind: str = "wordpiece"  # trained on the training captions; texts end in [SEP]
    vocab_size: int = None  # None: the model's vocab_size
    image: dict = None  # the image processor's settings (processors/image.py), e.g. {shift: 2, rotate: 10}

    def validate(self):
        self.require_choice("kind", ("wordpiece",))
        if self.vocab_size is not None:
            self.require_positive("vocab_size")
        if self.image is not None and not isinstance(self.image, dict):
            raise self.invalid(f"image must be a mapping of the image processor's settings, got {self.image!r}")


def contrastive(run: Run, run_dir: Path, resume: bool):
    if run.train.grad_accum > 1:
        raise UserError("contrastive training takes each pair's negatives from the whole batch, which grad_accum's "
                        "separate micro-batches would split; set train.grad_accum=1 and model.embed_chunk=N instead "
                        "(GradCache: the gradient of the whole batch with the memory of N rows)")
    data = run.data
    if resume:
        model, processor = load_checkpoint(run_dir / "last", families=families_of_kind(DUAL_ENCODER))
        splits = _splits(data, processor.image)
    else:
        model, processor, splits = _new_model(run)
    return model, processor, PairBatches(splits, processor, run.train.batch_size, model.config.max_seq_len,
                                         data.augment)


def _new_model(run: Run) -> tuple:
    """-> (model, processor, splits) for a new run: the caption tokenizer trained on the training
    captions (or MiniLM's), the image statistics fitted on the training images."""
    section = run.model if "preset" in run.model or "family" in run.model else {"preset": "clip-mnist", **run.model}
    config = model_config(section, DUAL_ENCODER)
    image = ImageProcessor.for_model(config, ImageProcessor.from_dict(run.tokenizer.image or {}))
    splits = _splits(run.data, image)
    minilm = None
    if config.text_init == "minilm":
        minilm, tokenizer = load_minilm()
        config = config.replace(text_encoder=minilm.config.to_dict(), text_pooling="mean")
    else:
        texts = splits["train"].texts + [text for text in splits["train"].negatives if text is not None]
        tokenizer = train_tokenizer(run.tokenizer.kind, "\n".join(texts), run.tokenizer.vocab_size or config.vocab_size)
        config = config.replace(vocab_size=tokenizer.vocab_size, eos_token_id=tokenizer.token_to_id(END_OF_TEXT),
                                text_pooling="eos")
    model = build_model(config)
    if minilm is not None:
        model.text.load_pretrained(minilm)
    return model, ClipProcessor(image.fit(splits["train"].items), tokenizer), splits


def _splits(data: PairData, image: ImageProcessor) -> dict:
    full = read_pairs(require_path(data.path), image)
    if data.val_path is not None:
        return {"train": full, "val": read_pairs(data.val_path, image)}
    train, val = split_pairs(full, data.val_fraction, data.seed)
    return {"train": train, "val": val}


CONTRASTIVE = Task("contrastive", DUAL_ENCODER, contrastive, data=PairData, tokenizer=CaptionTokenizer, family="clip",
                   batch_size=64, val_scores=PairBatches.val_scores)
