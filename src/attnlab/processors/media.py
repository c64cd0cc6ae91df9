"""The processors of classifiers of images, audio and video: one file or array in, the model's
input tensors out, with their settings saved beside the weights as processor.json.

A `MediaProcessor` is a validated dataclass (its fields are its settings) that answers:

    read(path) -> item            one file of its modality, or an .npy array of a raw item
    decode(data) -> item          the bytes of such a file (the server's base64 inputs)
    __call__(items) -> inputs     resize / normalise / pad a list of items into {key: (B, ...)}:
                                  the keyword arguments of model(**inputs)
    augment(inputs, generator)    random changes for training (data.augment); none by default
    fit(items) -> processor       the settings left to the data (None) computed from training items
    example_items(count, rng)     random raw items (N, ...) a tiny model reads, for tests

and the class methods `exists`, `load`, `example(config)` (a processor for a tiny model's config)
and `for_model(config, settings)` (one for a model to train). Every mistake in a file or a setting
is one `UserError` line. Every modality also reads .npy (an array of one raw item), so tests and
clients can send any modality the same way.

One processor class serves each modality (processors/<modality>.py, registered in
MEDIA_PROCESSORS by defining it): its fields are the run config's `tokenizer` section of the
<modality>_classification task. The fields a model's config decides (`model_settings`: input
size, channels, ...) are None there, meaning "the model's".
"""

import dataclasses
import io
import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ..config import Config
from ..errors import UserError

PROCESSOR_FILE = "processor.json"
HF_PREPROCESSOR_FILE = "preprocessor_config.json"
NPY_MAGIC = b"\x93NUMPY"
MEDIA_PROCESSORS = {}  # modality -> its processor class


@dataclasses.dataclass
class MediaProcessor(Config):
    section = "tokenizer"  # the run config section that holds the settings
    modality: ClassVar[str] = ""  # image, audio or video (models/base.py MEDIA_MODALITIES)
    suffixes: ClassVar[tuple] = ()  # the file types `read` takes besides .npy

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        MEDIA_PROCESSORS[cls.modality] = cls

    # -- saved with the checkpoint ------------------------------------------------------------
    @classmethod
    def exists(cls, directory) -> bool:
        return (Path(directory) / PROCESSOR_FILE).is_file()

    @classmethod
    def load(cls, directory) -> "MediaProcessor":
        path = Path(directory) / PROCESSOR_FILE
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise UserError(f"{path} is not readable JSON ({err}); the checkpoint is corrupt") from None
        if not isinstance(values, dict) or values.pop("processor", None) != cls.__name__:
            raise UserError(f"{path} does not hold a {cls.__name__}; the checkpoint is corrupt")
        return cls.from_dict(values)

    def save(self, directory):
        data = {"processor": type(self).__name__, **self.to_dict()}
        (Path(directory) / PROCESSOR_FILE).write_text(json.dumps(data, indent=2) + "\n")

    # -- made for a model -----------------------------------------------------------------------
    @classmethod
    def for_model(cls, config, settings: "MediaProcessor | None" = None) -> "MediaProcessor":
        """The processor for a model of `config`: `settings` (the run's tokenizer section; None:
        defaults) with the fields the model decides filled in. A value set there that differs from
        the model's is one line naming the model field to set instead."""
        settings = settings or cls()
        fixed = cls.model_settings(config)
        for name, value in fixed.items():
            if getattr(settings, name) not in (None, value):
                raise settings.invalid(f"{name}={getattr(settings, name)!r} differs from the model's {value!r}; "
                                       f"leave it out (the model's config decides it)")
        return cls.from_dict({**settings.to_dict(), **fixed})

    @classmethod
    def example(cls, config) -> "MediaProcessor":
        """A processor for a (tiny) model's config with default settings: for tests and examples."""
        return cls.for_model(config)

    @classmethod
    def from_hf(cls, directory, config) -> "MediaProcessor":
        """The processor of a Hugging Face checkpoint directory: its preprocessor_config.json
        translated by `hf_settings` (the defaults of Hugging Face's processor where it has none)."""
        path = Path(directory) / HF_PREPROCESSOR_FILE
        try:
            values = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, ValueError) as err:
            raise UserError(f"{path} is not readable JSON ({err})") from None
        return cls.for_model(config, cls.from_dict(cls.hf_settings(values if isinstance(values, dict) else {}, config)))

    @classmethod
    def hf_settings(cls, values: dict, config) -> dict:
        """Our settings from a Hugging Face preprocessor_config.json (values: {} when there is none)."""
        return {}

    @classmethod
    def model_settings(cls, config) -> dict:
        """The processor fields a model's config decides (its input size, channels, ...)."""
        raise NotImplementedError

    # -- raw input ----------------------------------------------------------------------------
    def read(self, path) -> np.ndarray:
        """One raw item from a file of this modality (or .npy); a missing, unreadable or wrong
        file is one line naming it."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{self.modality} file {path} does not exist")
        suffix = path.suffix.lower()
        if suffix not in (*self.suffixes, ".npy"):
            raise UserError(f"{path}: a {self.modality} file must end in {', '.join(self.suffixes)} or .npy")
        try:
            data = path.read_bytes()
        except OSError as err:
            raise UserError(f"cannot read {path}: {err.strerror}") from None
        return self.decode(data, str(path))

    def decode(self, data: bytes, name: str = "input") -> np.ndarray:
        """One raw item from the bytes of a file (.npy bytes too); `name` says which in errors."""
        item = load_npy(data, name) if data.startswith(NPY_MAGIC) else self.decode_file(data, name)
        return self.check_item(item, name)

    def decode_file(self, data: bytes, name: str) -> np.ndarray:
        """The item in the bytes of a file of this modality (PNG, WAV, ...)."""
        raise NotImplementedError

    def check_item(self, item: np.ndarray, name: str) -> np.ndarray:
        """`item` when it is a raw item this processor reads; else one line naming `name`."""
        raise NotImplementedError

    # -- model input ----------------------------------------------------------------------------
    def __call__(self, items: list) -> dict:
        raise NotImplementedError

    def augment(self, inputs: dict, generator: torch.Generator) -> dict:
        return inputs

    def fit(self, items: list) -> "MediaProcessor":
        return self

    def example_items(self, count: int, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError


def require_channel_stats(settings):
    """The normalisation settings `mean` and `std` of an image or video processor: None (fitted to
    the training data) or one number per channel, std positive; else one line naming the setting."""
    for name in ("mean", "std"):
        value = getattr(settings, name)
        if value is not None and (not isinstance(value, list) or len(value) != (settings.channels or len(value))
                                  or not all(isinstance(v, (int, float)) for v in value)):
            raise settings.invalid(f"{name} must be a list of {settings.channels} numbers (one per channel), "
                                   f"got {value!r}")
    if settings.std is not None and min(settings.std) <= 0:
        raise settings.invalid(f"std must be positive, got {settings.std}")


def load_npy(data: bytes, name: str) -> np.ndarray:
    """The array in .npy bytes (never unpickled); one line when they are not a plain array."""
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise UserError(f"{name} is not a readable .npy array ({err})") from None


def npy_bytes(item: np.ndarray) -> bytes:
    """The .npy file of an array: what `decode` reads for any modality."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(item), allow_pickle=False)
    return buffer.getvalue()


def require_numeric(item, name: str, modality: str) -> np.ndarray:
    """`item` as an array of real, finite numbers (uint8 or float), or one line naming `name`."""
    item = np.asarray(item)
    if item.dtype.kind not in "uif" or item.size == 0:
        raise UserError(f"{name}: a {modality} must be a non-empty array of numbers, got dtype {item.dtype} "
                        f"and shape {item.shape}")
    if item.dtype.kind == "f" and not np.isfinite(item).all():
        raise UserError(f"{name}: the {modality} holds NaN or infinite values")
    return item
