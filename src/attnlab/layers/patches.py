"""Inputs that are not text, made into token sequences: image or spectrogram patches, video tubelets,
and learned grid positions that resample to another grid.

A patch is a linear map of a (channels x kernel) window; a strided convolution computes all of
them at once. A stride below the kernel overlaps the patches (AST: 16x16 windows every 10 bins);
a (rows, columns) pair strides each axis differently (AST's frequency and time strides).
"""

import torch
from torch import nn
from torch.nn import functional as F


def grid_size(size: int, kernel: int, stride: int) -> int:
    """How many windows of `kernel` fit along an axis of `size` at `stride`."""
    return (size - kernel) // stride + 1


class PatchEmbedding(nn.Module):
    """(B, C, H, W) -> (B, h * w, dim), row-major over the (h, w) grid of patches."""

    def __init__(self, in_channels: int, dim: int, patch_size: int, stride: int | tuple | None = None,
                 bias: bool = True):
        super().__init__()
        self.patch_size = patch_size
        self.stride = stride or patch_size
        self.proj = nn.Conv2d(in_channels, dim, patch_size, self.stride, bias=bias)

    def grid(self, height: int, width: int) -> tuple:
        rows, columns = self.proj.stride
        return grid_size(height, self.patch_size, rows), grid_size(width, self.patch_size, columns)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(pixels).flatten(2).transpose(1, 2)


class TubeletEmbedding(nn.Module):
    """(B, T, C, H, W) frames -> (B, t * h * w, dim): non-overlapping (frames x size x size) tubelets,
    ordered time-major, then rows, then columns (ViViT's tubelet embedding)."""

    def __init__(self, in_channels: int, dim: int, tubelet_frames: int, patch_size: int):
        super().__init__()
        self.kernel = (tubelet_frames, patch_size, patch_size)
        self.proj = nn.Conv3d(in_channels, dim, self.kernel, self.kernel)

    def grid(self, frames: int, height: int, width: int) -> tuple:
        return tuple(size // k for size, k in zip((frames, height, width), self.kernel))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.proj(frames.transpose(1, 2)).flatten(2).transpose(1, 2)


def resample_grid_positions(table: torch.Tensor, grid: tuple, new_grid: tuple) -> torch.Tensor:
    """Learned positions (grid_h * grid_w, dim) of a patch grid, bicubically resampled to another
    grid, e.g. to run a ViT trained at 224 pixels on 384. Position tables are smooth enough for this
    to work, but a model loses accuracy at a size it never saw until it is fine-tuned there."""
    if tuple(grid) == tuple(new_grid):
        return table
    dim = table.shape[-1]
    image = table.reshape(1, *grid, dim).permute(0, 3, 1, 2)  # (1, dim, h, w)
    image = F.interpolate(image, size=tuple(new_grid), mode="bicubic", align_corners=False)
    return image.permute(0, 2, 3, 1).reshape(-1, dim)
