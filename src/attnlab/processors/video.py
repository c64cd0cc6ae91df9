"""Video clips -> model input: frame sampling, resizing, channels and normalisation.

A clip is an array of frames, (T, H, W) (one channel) or (T, H, W, C) with C = 1 or 3, integers
(0..255) or floats (0..1), read from a .npy file or a one-array .npz file. attnlab decodes no video
formats (mp4, webm, ...): no decoder is available offline, so decode elsewhere (e.g. PyAV or
ffmpeg) and save the frames with numpy.save.

Per clip:
  frames   n_frames of them, frame_stride apart, from a window centred in the clip (a short clip
           repeats its last frame)
  channels one channel repeated to three, or three averaged to one, to match the model
  resize   the shorter side to image_size (bilinear, antialiased), then a centred square crop
  values   uint8 / 255, then (x - mean) / std per channel
Training augments with a random spatial shift (the same for every frame of a clip, edges repeated);
never with flips, which reverse the direction of motion.
"""

import dataclasses
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError

PROCESSOR_FILE = "video_processor.json"
CLIP_SUFFIXES = (".npy", ".npz")


@dataclasses.dataclass
class VideoProcessor:
    n_frames: int = 8
    frame_stride: int = 1
    image_size: int = 224
    channels: int = 3
    mean: tuple = (0.5,)  # one value per channel, or one for all
    std: tuple = (0.5,)
    max_shift: int = 0  # training augmentation: shift each clip by up to this many pixels each way

    def __post_init__(self):
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        for name in ("n_frames", "frame_stride", "image_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise UserError(f"video processor: {name} must be a positive integer, got {getattr(self, name)!r}")
        if self.channels not in (1, 3):
            raise UserError(f"video processor: channels must be 1 or 3, got {self.channels!r}")
        if len(self.mean) not in (1, self.channels) or len(self.std) not in (1, self.channels) or 0 in self.std:
            raise UserError(f"video processor: mean and std need 1 or {self.channels} values, std non-zero")
        if not isinstance(self.max_shift, int) or self.max_shift < 0:
            raise UserError(f"video processor: max_shift must be an integer >= 0, got {self.max_shift!r}")

    # -- saved with the checkpoint ------------------------------------------------------------
    @staticmethod
    def exists(directory) -> bool:
        return (Path(directory) / PROCESSOR_FILE).is_file()

    @classmethod
    def load(cls, directory) -> "VideoProcessor":
        path = Path(directory) / PROCESSOR_FILE
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as err:
            raise UserError(f"{path} is not a video processor file ({err}); save the processor again") from None

    def save(self, directory):
        (Path(directory) / PROCESSOR_FILE).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def example(cls, config) -> "VideoProcessor":
        """A processor that makes input for a model of `config` (frames, size, channels)."""
        return cls(n_frames=config.n_frames, image_size=config.image_size, channels=config.in_channels)

    # -- raw input ----------------------------------------------------------------------------
    def read(self, path) -> np.ndarray:
        """One clip file (.npy, or .npz holding one array) -> its frames, checked."""
        path = Path(path)
        if path.suffix not in CLIP_SUFFIXES:
            raise UserError(f"{path}: a clip must be a .npy or .npz array of frames (video files are not decoded "
                            "here: save the frames with numpy.save)")
        if not path.is_file():
            raise UserError(f"clip {path} does not exist")
        return self._loaded(path.read_bytes(), str(path))

    def decode(self, data: bytes) -> np.ndarray:
        """The bytes of a .npy or .npz clip file (as a server request carries them) -> its frames."""
        return self._loaded(data, "the posted clip")

    def _loaded(self, data: bytes, source: str) -> np.ndarray:
        try:
            loaded = np.load(io.BytesIO(data), allow_pickle=False)
            if isinstance(loaded, np.lib.npyio.NpzFile):
                with loaded:
                    if len(loaded.files) != 1:
                        raise UserError(f"{source} holds {len(loaded.files)} arrays; a clip file holds one")
                    loaded = loaded[loaded.files[0]]
        except UserError:
            raise
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise UserError(f"{source} is not a .npy or .npz array ({type(err).__name__}); "
                            "send numpy.save output") from None
        return check_clip(loaded, source)

    # -- model input --------------------------------------------------------------------------
    def __call__(self, items: list) -> dict:
        """Clips (T, H, W) or (T, H, W, C) -> {"pixel_values": (B, n_frames, channels, size, size)}."""
        if not items:
            raise UserError("no clips to process")
        return {"pixel_values": torch.stack([self.clip(check_clip(item, "a clip")) for item in items])}

    def clip(self, frames: np.ndarray) -> torch.Tensor:
        """One checked clip -> (n_frames, channels, image_size, image_size) normalised floats."""
        chosen = frames[self.frame_indices(len(frames))]
        x = torch.from_numpy(np.ascontiguousarray(chosen))
        x = x.float() if x.is_floating_point() else x.float() / 255
        x = x.unsqueeze(-1) if x.dim() == 3 else x
        x = self._channels(x.permute(0, 3, 1, 2))  # (T, C, H, W)
        x = self._resized(x)
        mean = torch.tensor(self.mean).view(-1, 1, 1)
        return (x - mean) / torch.tensor(self.std).view(-1, 1, 1)

    def frame_indices(self, length: int) -> np.ndarray:
        """n_frames indices frame_stride apart, centred in a clip of `length` frames; past the end, the last."""
        span = (self.n_frames - 1) * self.frame_stride + 1
        start = max(0, (length - span) // 2)
        return np.minimum(start + self.frame_stride * np.arange(self.n_frames), length - 1)

    def _channels(self, x: torch.Tensor) -> torch.Tensor:
        have = x.size(1)
        if have == self.channels:
            return x
        return x.expand(-1, 3, -1, -1) if have == 1 else x.mean(1, keepdim=True)

    def _resized(self, x: torch.Tensor) -> torch.Tensor:
        """(T, C, H, W) -> (T, C, size, size): the shorter side to size, then the centre square."""
        height, width = x.shape[-2:]
        if (height, width) == (self.image_size, self.image_size):
            return x
        scale = self.image_size / min(height, width)
        size = (max(self.image_size, round(height * scale)), max(self.image_size, round(width * scale)))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        top, left = (size[0] - self.image_size) // 2, (size[1] - self.image_size) // 2
        return x[..., top:top + self.image_size, left:left + self.image_size]

    # -- training -----------------------------------------------------------------------------
    def augment(self, batch: dict, generator: torch.Generator) -> dict:
        """Shift each clip (all its frames alike) by up to max_shift pixels along each axis, edges
        repeated. No flips: a mirrored clip moves the other way."""
        if not self.max_shift:
            return batch
        x = batch["pixel_values"]  # (B, T, C, H, W)
        b, t, c, h, w = x.shape
        m = self.max_shift
        padded = F.pad(x.reshape(b, t * c, h, w), (m, m, m, m), mode="replicate")
        offsets = torch.randint(0, 2 * m + 1, (b, 2), generator=generator).tolist()
        shifted = torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets)])
        return {**batch, "pixel_values": shifted.view(b, t, c, h, w)}


def check_clip(frames, source: str) -> np.ndarray:
    """A clip as (T, H, W) or (T, H, W, C) numbers with C in 1, 3, or one line saying what is wrong."""
    if not isinstance(frames, np.ndarray) or frames.dtype.kind not in "uif":
        kind = getattr(frames, "dtype", type(frames).__name__)
        raise UserError(f"{source} must be a numeric array of frames (uint8 or float), got {kind}")
    if frames.ndim not in (3, 4) or (frames.ndim == 4 and frames.shape[-1] not in (1, 3)) or 0 in frames.shape:
        raise UserError(f"{source} has shape {frames.shape}; a clip is (frames, height, width) or "
                        "(frames, height, width, channels) with 1 or 3 channels")
    return frames
