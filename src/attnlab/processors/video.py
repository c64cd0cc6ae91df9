"""The video processor: clips as arrays in, normalised (B, T, C, S, S) pixel_values out.

A clip is an array of frames, (T, H, W) (one channel) or (T, H, W, C) with C = 1 or 3: integers
in 0..255 or floats in 0..1, in a .npy file or an .npz holding one array. attnlab decodes no video
formats (mp4, webm, ...): no video decoder is available offline, so decode elsewhere (PyAV,
ffmpeg) and save the frames with numpy.save.

Per clip:
  frames    n_frames of them, frame_stride apart, from a window centred in the clip (a clip too
            short for the window repeats its last frame)
  channels  one channel repeated to three, or three averaged to one, as the model takes
  resize    the shorter side to image_size (bilinear, antialiased), then the centred square
  values    (x - mean) / std per channel (left unset, mean and std are the training clips')
Augmentation (training only, `data.augment`): a random spatial shift of up to `shift` pixels each
way, the same for every frame of a clip, edges repeated. Never a flip: a mirrored clip moves the
other way, and the direction of motion is often what a video classifier is asked.
"""

import dataclasses
import io
import zipfile

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from .media import MediaProcessor, require_channel_stats, require_numeric


@dataclasses.dataclass
class VideoProcessor(MediaProcessor):
    modality = "video"
    suffixes = (".npz",)
    n_frames: int = None  # frames the model takes (None in a run config: the model's)
    image_size: int = None  # frames are resized to image_size x image_size (None: the model's)
    channels: int = None  # 1 or 3 (None: the model's)
    frame_stride: int = 1  # take every frame_stride-th frame of the clip
    mean: list = None  # per channel, of pixels in 0..1; None: set by `fit` to the training clips' (0.5 before)
    std: list = None
    shift: int = 2  # augmentation: largest spatial shift in pixels (of the resized frames)

    def validate(self):
        for name in ("n_frames", "image_size"):
            if getattr(self, name) is not None:
                self.require_positive(name)
        if self.channels is not None:
            self.require_choice("channels", (1, 3))
        self.require_positive("frame_stride")
        require_channel_stats(self)
        if self.shift < 0:
            raise self.invalid(f"shift must be >= 0, got {self.shift}")

    @classmethod
    def model_settings(cls, config) -> dict:
        return {"n_frames": config.n_frames, "image_size": config.image_size, "channels": config.n_channels}

    @classmethod
    def example(cls, config) -> "VideoProcessor":
        return cls.for_model(config, cls(mean=[0.5] * config.n_channels, std=[0.5] * config.n_channels))

    # -- raw input ----------------------------------------------------------------------------
    def decode_file(self, data: bytes, name: str) -> np.ndarray:
        """The one array of an .npz file's bytes."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
                if len(arrays.files) != 1:
                    raise UserError(f"{name} holds {len(arrays.files)} arrays; a clip file holds one")
                return arrays[arrays.files[0]]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise UserError(f"{name} is not a .npy or .npz clip ({type(err).__name__}); video files are not "
                            "decoded here: save the frames with numpy.save") from None

    def check_item(self, item: np.ndarray, name: str) -> np.ndarray:
        item = require_numeric(item, name, "video")
        if item.ndim not in (3, 4) or (item.ndim == 4 and item.shape[3] not in (1, 3)):
            raise UserError(f"{name}: a clip must be an array (T, H, W) or (T, H, W, C) with C = 1 or 3, "
                            f"got shape {item.shape}")
        return item

    # -- model input ----------------------------------------------------------------------------
    def __call__(self, items: list) -> dict:
        """Clips -> {"pixel_values": (B, n_frames, channels, S, S)}, normalised."""
        if not items:
            raise UserError("no clips to process")
        pixels = torch.stack([self.pixels(item) for item in items])  # (B, T, C, S, S) in 0..1
        mean, std = (torch.tensor(v if v is not None else [0.5] * self.channels) for v in (self.mean, self.std))
        return {"pixel_values": (pixels - mean[:, None, None]) / std[:, None, None]}

    def pixels(self, item: np.ndarray) -> torch.Tensor:
        """One clip (T, H, W[, C]) -> (n_frames, channels, S, S) floats in 0..1."""
        item = self.check_item(item, "clip")
        x = torch.from_numpy(np.array(item[self.frame_indices(len(item))], dtype=np.float32))
        if item.dtype.kind in "ui":
            x = x / 255.0
        x = x[:, None] if x.dim() == 3 else x.permute(0, 3, 1, 2)  # (T, C, H, W)
        if x.size(1) != self.channels:
            x = x.expand(-1, 3, -1, -1) if x.size(1) == 1 else x.mean(1, keepdim=True)
        return self.resized(x)

    def frame_indices(self, length: int) -> np.ndarray:
        """n_frames indices frame_stride apart, centred in a clip of `length` frames; past its end, the last."""
        span = (self.n_frames - 1) * self.frame_stride + 1
        start = max(0, (length - span) // 2)
        return np.minimum(start + self.frame_stride * np.arange(self.n_frames), length - 1)

    def resized(self, x: torch.Tensor) -> torch.Tensor:
        """(T, C, H, W) -> (T, C, S, S): the shorter side to S, then the centred square."""
        height, width = x.shape[-2:]
        size = self.image_size
        if (height, width) == (size, size):
            return x
        scale = size / min(height, width)
        scaled = (max(size, round(height * scale)), max(size, round(width * scale)))
        x = F.interpolate(x, size=scaled, mode="bilinear", align_corners=False, antialias=True)
        top, left = (scaled[0] - size) // 2, (scaled[1] - size) // 2
        return x[..., top:top + size, left:left + size]

    def fit(self, items: list) -> "VideoProcessor":
        """Mean and std left unset become the per-channel statistics of `items` (sampled and resized)."""
        if self.mean is not None and self.std is not None:
            return self
        pixels = torch.stack([self.pixels(item) for item in items]).transpose(0, 2).flatten(1)  # (C, N*T*S*S)
        mean = self.mean or pixels.mean(1).tolist()
        std = self.std or pixels.std(1).clamp(min=1e-3).tolist()
        return dataclasses.replace(self, mean=[round(v, 6) for v in mean], std=[round(v, 6) for v in std])

    # -- training -------------------------------------------------------------------------------
    def augment(self, inputs: dict, generator: torch.Generator) -> dict:
        """Shift each clip, all its frames alike, by up to `shift` pixels along each axis, edges
        repeated. No flips: they reverse the direction of motion."""
        if not self.shift:
            return inputs
        x = inputs["pixel_values"]  # (B, T, C, S, S)
        b, t, c, h, w = x.shape
        m = self.shift
        padded = F.pad(x.reshape(b, t * c, h, w), (m, m, m, m), mode="replicate")
        offsets = torch.randint(0, 2 * m + 1, (b, 2), generator=generator).tolist()
        shifted = torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets)])
        return {**inputs, "pixel_values": shifted.view(b, t, c, h, w)}

    def example_items(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """Random uint8 clips (N, T, S, S, C) of the model's size (N, T, S, S for one channel)."""
        shape = (count, self.n_frames, self.image_size, self.image_size) + ((3,) if self.channels == 3 else ())
        return rng.integers(0, 256, size=shape, dtype=np.uint8)

