"""The `lm` task: causal language modelling on a text file or folder.

    task: lm
    model: {preset: gpt2-nano}                 # or family: gpt | reformer | transformer_xl plus fields
    tokenizer: {kind: char}                    # char | bpe | wordpiece, vocab_size
    data: {path: corpus.txt, val_fraction: 0.1}

With `train.teacher: CKPT` the model is distilled from that causal LM (trainer.py) and takes its
tokenizer instead of training one: a draft for speculative decoding, say.

Token ids are cached as memmaps in the run directory; blocks of the model's context length are
drawn at random, the last val_fraction of the text held out.
"""

import dataclasses
from pathlib import Path

from ...checkpoint import load_checkpoint, load_processor, resolve_checkpoint
from ...config import Config
from ...data.corpus import LMBlocks, read_text
from ...errors import UserError
from ...models.base import CAUSAL_LM, build_model
from ...tokenizers import train_tokenizer
from .base import Run, Task, TextTokenizer, cached_splits, model_config, require_path, require_val_fraction


@dataclasses.dataclass
class LMData(Config):
    section = "data"
    path: str = None  # text file or folder
    val_fraction: float = 0.1

    def validate(self):
        require_val_fraction(self)


def causal_lm(run: Run, run_dir: Path, resume: bool):
    data, tok = run.data, run.tokenizer
    if resume:
        model, tokenizer = load_checkpoint(run_dir / "last")
    else:
        tokenizer = (teacher_tokenizer(run.train.teacher) if run.train.teacher else
                     train_tokenizer(tok.kind, read_text(require_path(data.path)), tok.vocab_size))
        model = build_model(model_config(run.model, CAUSAL_LM, vocab_size=tokenizer.vocab_size))
    splits = cached_splits(run_dir / "data", data.path, tokenizer, data.val_fraction)
    return model, tokenizer, LMBlocks(splits, model.config.max_seq_len, run.train.batch_size)


def teacher_tokenizer(path: str):
    """A distillation student reads text as its teacher does (train.teacher): the teacher's tokenizer."""
    tokenizer = load_processor(resolve_checkpoint(path))  # not the model: building one would draw from the seed
    if tokenizer is None:
        raise UserError(f"train.teacher: {path} has no tokenizer to share with its student")
    return tokenizer


LM = Task("lm", CAUSAL_LM, causal_lm, data=LMData, tokenizer=TextTokenizer, family="gpt")
