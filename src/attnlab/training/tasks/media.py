"""The classification tasks of images, audio and video: one Task per modality that has a processor
(processors/media.py MEDIA_PROCESSORS), the same code for all.

    task: image_classification                       # or audio_classification, video_classification
    model: {preset: vit-tiny, n_labels: 10}          # a classifier of the task's modality; n_labels and
                                                     # id2label are set from the data
    tokenizer: {shift: 2}                            # the modality's processor's settings (its fields,
                                                     # processors/<modality>.py); input size: the model's
    data: {path: digits.npz, val_fraction: 0.15, seed: 0, augment: true}   # or val_path: a separate set

The data is a folder with one subfolder per class, or an .npz with x and y (data/media.py). The
validation split is stratified by class (or val_path); each evaluation logs val_accuracy beside
val_loss. A batch counts one "token" per example, so the trainer's tokens_per_s is examples/s.
"""

import dataclasses
import functools
from pathlib import Path

from ...checkpoint import load_checkpoint
from ...config import Config
from ...data.media import MediaBatches, read_labelled_media, stratified_split
from ...errors import UserError
from ...models.base import CLASSIFIER, KINDS, build_model, default_task, family_spec
from ...processors.media import MEDIA_PROCESSORS
from .base import Run, Task, model_config, model_family, require_path, require_val_fraction


@dataclasses.dataclass
class MediaData(Config):
    section = "data"
    path: str = None  # folder of class subfolders, or .npz with x, y
    val_path: str = None  # a separate validation set; None: a stratified val_fraction of path
    val_fraction: float = 0.15
    seed: int = 0  # of the validation split
    augment: bool = False  # the processor's random changes on training batches

    def validate(self):
        require_val_fraction(self)


def media_task(processor: type) -> Task:
    """The classification task of `processor`'s modality; its tokenizer section is the processor's settings."""
    modality = processor.modality
    return Task(f"{modality}_classification", CLASSIFIER, functools.partial(_setup, modality), data=MediaData,
                tokenizer=processor, family="", val_scores=MediaBatches.val_scores, batch_size=64)


def _setup(modality: str, run: Run, run_dir: Path, resume: bool):
    data = run.data
    spec = _classifier_spec(modality, run.model)
    if resume:
        model, processor = load_checkpoint(run_dir / "last")
        splits = _splits(data, processor, model_names(model))
    else:
        processor = spec.processor.for_model(model_config(run.model, CLASSIFIER), run.tokenizer)
        splits = _splits(data, processor, None)
        names = splits["train"].names
        id2label = {str(i): name for i, name in enumerate(names)}
        model = build_model(model_config(run.model, CLASSIFIER, n_labels=len(names), id2label=id2label))
        processor = processor.fit(splits["train"].items)
    return model, processor, MediaBatches(splits, processor, run.train.batch_size, data.augment)


def _classifier_spec(modality: str, section: dict):
    if "preset" not in section and "family" not in section:
        raise UserError(f"{modality}_classification needs a model: set model.preset (or --preset) or model.family")
    spec = family_spec(model_family(section))
    if spec.kind == CLASSIFIER and spec.modality != modality:
        raise UserError(f"{modality}_classification trains a classifier of {modality}, but the {spec.name} model "
                        f"reads {spec.modality}; use task={default_task(spec)}")
    if spec.kind != CLASSIFIER:
        raise UserError(f"{modality}_classification trains {KINDS[CLASSIFIER]}, but the {spec.name} model is "
                        f"{KINDS[spec.kind]}; train it with task={default_task(spec)}")
    return spec


def model_names(model) -> list:
    """A classifier's label names by id (config id2label; LABEL_i where it names none)."""
    id2label, count = model.config.id2label, model.config.n_labels
    return [id2label[str(i)] if id2label else f"LABEL_{i}" for i in range(count)]


def _splits(data: MediaData, processor, names) -> dict:
    """{"train", "val"} labelled sets; label ids follow `names` (a resumed model's) or the training set's."""
    full = read_labelled_media(require_path(data.path), processor, names)
    if data.val_path is None:
        train, val = stratified_split(full, data.val_fraction, data.seed)
    else:
        train, val = full, read_labelled_media(data.val_path, processor, full.names)
    if len(val) == 0 or len(train) == 0:
        raise UserError(f"{data.path} is too small to split: give each class at least two examples, or data.val_path")
    return {"train": train, "val": val}


MEDIA_TASKS = tuple(media_task(processor) for processor in MEDIA_PROCESSORS.values())
