"""The image processor: PNG / JPEG / .npy in, normalised (B, C, S, S) pixel_values out.

An item is an array (H, W) or (H, W, C) with C = 1, 3 or 4 (alpha is dropped): uint8 in 0..255,
or floats in 0..1. It is resized to the model's square size (bilinear, antialiased), brought to
the model's channels (grey is repeated to RGB; RGB becomes grey by luminance), and normalised with
the per-channel mean and std saved in the processor (left unset, they are the training images').

Augmentation (training only, `data.augment`): a random affine map per image, a shift of up to
`shift` pixels, a rotation of up to `rotate` degrees, a scale within 1 +- `scale`, and a
horizontal flip with probability one half when `flip` (off by default: it changes digits and text).
"""

import dataclasses
import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ..errors import UserError
from .media import MediaProcessor, require_channel_stats, require_numeric

LUMINANCE = (0.299, 0.587, 0.114)  # ITU-R BT.601, as Pillow's convert("L")


@dataclasses.dataclass
class ImageProcessor(MediaProcessor):
    modality = "image"
    suffixes = (".png", ".jpg", ".jpeg")
    image_size: int = None  # the model's input is image_size x image_size (None in a run config: the model's)
    channels: int = None  # 1 or 3 (None in a run config: the model's)
    mean: list = None  # per channel, of pixels in 0..1; None: set by `fit` to the training images' (0.5 before)
    std: list = None
    shift: float = 2.0  # augmentation: largest shift in pixels (of the resized image)
    rotate: float = 0.0  # degrees
    scale: float = 0.0  # fraction of the size
    flip: bool = False

    def validate(self):
        if self.image_size is not None:
            self.require_positive("image_size")
        if self.channels is not None:
            self.require_choice("channels", (1, 3))
        require_channel_stats(self)
        if self.shift < 0 or self.rotate < 0 or not 0 <= self.scale < 1:
            raise self.invalid("shift and rotate must be >= 0 and scale in [0, 1)")

    @classmethod
    def model_settings(cls, config) -> dict:
        return {"image_size": config.image_size, "channels": config.n_channels}

    @classmethod
    def hf_settings(cls, values: dict, config) -> dict:
        """ViTImageProcessor's normalisation (its defaults: mean and std 0.5 per channel; none when
        do_normalize is false). Its resize is ours: to the model's size."""
        normalise = values.get("do_normalize", True)
        mean, std = (values.get("image_mean", 0.5), values.get("image_std", 0.5)) if normalise else (0.0, 1.0)
        return {name: [float(v) for v in value] if isinstance(value, list) else [float(value)] * config.n_channels
                for name, value in (("mean", mean), ("std", std))}

    @classmethod
    def example(cls, config) -> "ImageProcessor":
        return cls.for_model(config, cls(mean=[0.5] * config.n_channels, std=[0.5] * config.n_channels))

    # -- raw input ----------------------------------------------------------------------------
    def decode_file(self, data: bytes, name: str) -> np.ndarray:
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                return np.asarray(image if image.mode in ("L", "RGB", "RGBA") else image.convert("RGB"))
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as err:
            raise UserError(f"{name} is not a readable PNG or JPEG image ({err})") from None

    def check_item(self, item: np.ndarray, name: str) -> np.ndarray:
        item = require_numeric(item, name, "image")
        if item.ndim not in (2, 3) or (item.ndim == 3 and item.shape[2] not in (1, 3, 4)):
            raise UserError(f"{name}: an image must be an array (H, W) or (H, W, C) with C = 1, 3 or 4, "
                            f"got shape {item.shape}")
        return item

    # -- model input ----------------------------------------------------------------------------
    def __call__(self, items: list) -> dict:
        """Images -> {"pixel_values": (B, C, S, S)}, normalised."""
        pixels = torch.stack([self.pixels(item) for item in items])  # (B, C, S, S) in 0..1
        mean, std = (torch.tensor(v if v is not None else [0.5] * self.channels) for v in (self.mean, self.std))
        return {"pixel_values": (pixels - mean[:, None, None]) / std[:, None, None]}

    def pixels(self, item: np.ndarray) -> torch.Tensor:
        """One image (H, W[, C]) -> (channels, S, S) floats in 0..1."""
        item = self.check_item(item, "image")
        x = torch.from_numpy(np.array(item, dtype=np.float32))  # a copy: decoded images are read-only
        if item.dtype.kind in "ui":
            x = x / 255.0
        x = x[None] if x.dim() == 2 else x.permute(2, 0, 1)[:3]  # (C, H, W), alpha dropped
        if x.size(0) != self.channels:
            x = x.expand(3, -1, -1) if x.size(0) == 1 else (x * torch.tensor(LUMINANCE)[:, None, None]).sum(0, True)
        if x.shape[1:] != (self.image_size, self.image_size):
            x = F.interpolate(x[None], size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True)[0]
        return x

    def fit(self, items: list) -> "ImageProcessor":
        """Mean and std left unset become the per-channel statistics of `items` (after resizing)."""
        if self.mean is not None and self.std is not None:
            return self
        pixels = torch.stack([self.pixels(item) for item in items]).transpose(0, 1).flatten(1)  # (C, N*S*S)
        mean = self.mean or pixels.mean(1).tolist()
        std = self.std or pixels.std(1).clamp(min=1e-3).tolist()
        return dataclasses.replace(self, mean=[round(v, 6) for v in mean], std=[round(v, 6) for v in std])

    def augment(self, inputs: dict, generator: torch.Generator) -> dict:
        """A random affine map of each image (shift, rotation, scale, flip), edges repeated."""
        x = inputs["pixel_values"]  # (B, C, S, S)
        rows = x.size(0)
        uniform = torch.rand(rows, 5, generator=generator) * 2 - 1  # (B, 5) in [-1, 1)
        angle = uniform[:, 0] * math.radians(self.rotate)
        zoom = 1 + uniform[:, 1] * self.scale
        flip = torch.where((uniform[:, 2] > 0) & self.flip, -1.0, 1.0)
        shift = uniform[:, 3:] * (2 * self.shift / self.image_size)  # in grid units: the image spans [-1, 1]
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1),
                             torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)  # (B, 2, 3)
        grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
        return {**inputs, "pixel_values": F.grid_sample(x, grid, padding_mode="border", align_corners=False)}

    def example_items(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """Random uint8 images (N, S, S, C) of the model's size (N, S, S for one channel)."""
        shape = (count, self.image_size, self.image_size) + ((3,) if self.channels == 3 else ())
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
