"""Encoder pretraining objectives for `attnlab train`: masked LM, optionally with NSP.

    task: mlm
    model: {preset: bert-tiny}            # any bert-family preset or fields
    tokenizer: {kind: wordpiece, vocab_size: 2000}   # or {path: DIR} of a Hugging Face tokenizer
    data: {path: corpus.txt, seq_len: 128, mask_prob: 0.15, whole_word: false, nsp: false}
"""

from pathlib import Path

import numpy as np

from ..checkpoint import load_checkpoint
from ..data.corpus import read_text
from ..data.mlm import MLMBlocks
from ..errors import UserError
from ..models.base import PRESETS, build_model
from ..tokenizers import SubwordTokenizer, load_hf_tokenizer, train_tokenizer
from .tasks import cached_splits, model_config, task


def encode_plain(tokenizer, text: str) -> np.ndarray:
    """Token ids of every line, without special tokens (the task adds [CLS] and [SEP] itself)."""
    lines = [line for line in text.splitlines() if line.strip()]
    return np.fromiter((i for ids in tokenizer.encode_batch(lines, add_special_tokens=False) for i in ids),
                       dtype=np.int64)


def _tokenizer(run: dict, text: str):
    section = run.get("tokenizer", {})
    if "path" in section:
        return load_hf_tokenizer(Path(section["path"]))
    tokenizer = train_tokenizer(section.get("kind", "wordpiece"), text, section.get("vocab_size"))
    if not isinstance(tokenizer, SubwordTokenizer):
        raise UserError("masked LM needs a subword tokenizer: tokenizer.kind: wordpiece, or tokenizer.path")
    return tokenizer


@task("mlm")
def masked_lm(run: dict, run_dir: Path, resume: bool):
    data, train = run.get("data", {}), run.get("train", {})
    nsp = bool(data.get("nsp", False))
    if resume:
        model, tokenizer = load_checkpoint(run_dir / "last", families=("bert",))
    else:
        if "path" not in data:
            raise UserError("data.path is missing: point it at a text file or folder")
        tokenizer = _tokenizer(run, read_text(data["path"]))
        section = run.get("model", {})
        if "preset" not in section and "family" not in section:
            section = {"preset": "bert-tiny", **section}
        if section.get("preset") in PRESETS and PRESETS[section["preset"]].family != "bert":
            raise UserError(f"task mlm trains a bert-family model, not preset {section['preset']!r}; "
                            "choose e.g. bert-tiny, bert-base or minilm-l6")
        fields = dict(vocab_size=tokenizer.vocab_size, head="pretraining" if nsp else "mlm",
                      pad_token_id=tokenizer.pad_id)
        model = build_model(model_config({"family": "bert", **section}, **fields))
    seq_len = int(data.get("seq_len", min(128, model.config.max_length)))
    if seq_len > model.config.max_length:
        raise UserError(f"data.seq_len {seq_len} exceeds the model's max_length {model.config.max_length}")
    val_fraction = float(data.get("val_fraction", 0.1))
    splits = cached_splits(run_dir / "data", data, tokenizer, val_fraction, encode=encode_plain)
    batches = MLMBlocks(splits, tokenizer, seq_len, int(train.get("batch_size", 12)),
                        mask_prob=float(data.get("mask_prob", 0.15)), whole_word=bool(data.get("whole_word", False)),
                        nsp=nsp)
    return model, tokenizer, batches
