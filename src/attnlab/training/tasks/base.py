"""What every task shares: the `Task` record, the resolved `Run`, the plain-text tokenizer
section, and helpers for the model section and the cached token splits."""

import dataclasses
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Callable, ClassVar

from ...config import Config
from ...data.corpus import encode_text, open_memmap, read_text, split_ids, write_memmap
from ...errors import UserError
from ...models.base import KINDS, config_from_dict, default_task, families_of_kind, family_spec, preset
from ...tokenizers import TOKENIZER_KINDS
from ..trainer import TrainConfig


@dataclasses.dataclass(frozen=True)
class Task:
    """A training objective: the kind of model it trains (models/base.py KINDS), its typed `data`
    and `tokenizer` sections, and `setup(run, run_dir, resume) -> (model, tokenizer, batch source)`.
    `family` is the one it builds when the `model` section names none. `batch_size` is the task's
    default for train.batch_size, used when the run does not set it (None: TrainConfig's);
    `train_defaults` the task's defaults for any other train settings the run does not set.
    `val_scores(batches, model) -> dict`, when set, adds scores to each evaluation (e.g. val_accuracy)."""

    name: str
    kind: str
    setup: Callable
    data: type
    tokenizer: type
    family: str
    batch_size: int | None = None
    val_scores: Callable | None = None
    train_defaults: dict = None


@dataclasses.dataclass
class Run:
    """A run config with every section checked: `model` stays a dict (a preset plus overrides,
    or a family plus fields), validated by the family's config class when the model is built."""

    task: Task
    model: dict
    tokenizer: Config
    data: Config
    train: TrainConfig


@dataclasses.dataclass
class TextTokenizer(Config):
    """tokenizer: {kind, vocab_size}: a tokenizer trained on the data (vocab_size: BPE and WordPiece)."""

    section = "tokenizer"
    kinds: ClassVar[tuple] = TOKENIZER_KINDS
    kind: str = "char"
    vocab_size: int = None  # None: 1024 for BPE and WordPiece

    def validate(self):
        self.require_choice("kind", self.kinds)
        if self.vocab_size is not None:
            self.require_positive("vocab_size")


def require_val_fraction(section: Config):
    if not 0 < section.val_fraction < 1:
        raise section.invalid(f"val_fraction must be in (0, 1), got {section.val_fraction}")


def model_family(section: dict, default: str = "gpt") -> str:
    """The family the `model` section names, through its preset or its `family` field."""
    return preset(section["preset"]).family if "preset" in section else section.get("family", default)


def model_config(section: dict, kind: str, **fixed):
    """The `model` section -> a config: `preset: NAME` plus overrides, or `family: NAME` plus
    fields; a family of another kind than the task trains is one error naming the task to use."""
    family = model_family(section)
    found = family_spec(family).kind
    if found != kind:
        raise UserError(f"this task trains {KINDS[kind]}, but the {family} model is {KINDS[found]}; "
                        f"train it with task={default_task(family_spec(family))}, or choose a model of the task's kind "
                        f"({', '.join(families_of_kind(kind))})")
    section = {**section, **fixed}
    if "preset" in section:
        name = section.pop("preset")
        return preset(name, **section)
    return config_from_dict({"family": family, **section})


def cached_splits(cache_dir: Path, path: str | None, tokenizer, val_fraction: float, encode=encode_text) -> dict:
    """{"train", "val"} -> token ids of the text at `path`, the last val_fraction held out; cached
    as memmaps in `cache_dir`, with the digest of what they came from (text, tokenizer, split,
    encoding) beside them: a cache of anything else is rebuilt."""
    text = read_text(require_path(path))
    paths = {split: cache_dir / f"{split}.bin" for split in ("train", "val")}
    key_file, key = cache_dir / "source.json", {"digest": source_digest(text, tokenizer, val_fraction, encode)}
    if not all(p.exists() for p in paths.values()) or not key_file.exists() or json.loads(key_file.read_text()) != key:
        key_file.unlink(missing_ok=True)  # first: a cache cut short by a kill is never taken for a good one
        ids = encode(tokenizer, text)
        for split, part in zip(paths, split_ids(ids, val_fraction)):
            write_memmap(part, paths[split], tokenizer.vocab_size)
        key_file.write_text(json.dumps(key))
    return {split: open_memmap(p, tokenizer.vocab_size) for split, p in paths.items()}


def source_digest(text: str, tokenizer, val_fraction: float, encode) -> str:
    digest = hashlib.sha256(f"{encode.__module__}.{encode.__qualname__} {val_fraction!r}\n".encode())
    digest.update(text.encode("utf-8", "surrogatepass"))
    with tempfile.TemporaryDirectory() as saved:
        tokenizer.save(Path(saved))
        for file in sorted(Path(saved).iterdir()):
            digest.update(file.name.encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def require_path(path: str | None) -> str:
    if path is None:
        raise UserError("data.path is missing: point it at a text file or folder (or pass --data)")
    return path

