"""The video processor: clip files in, (B, T, C, H, W) normalised frames out; user mistakes are one line."""

import io

import numpy as np
import pytest
import torch

from attnlab.errors import UserError
from attnlab.processors.video import VideoProcessor


def numbered_clip(frames=20, size=8):
    """Frame i is filled with the value i (uint8), so sampled frames show their index."""
    return np.broadcast_to(np.arange(frames, dtype=np.uint8)[:, None, None], (frames, size, size)).copy()


def test_frames_are_sampled_centred_at_the_stride_and_short_clips_repeat_their_last():
    processor = VideoProcessor(n_frames=4, frame_stride=2, image_size=8, channels=1, mean=(0,), std=(1 / 255,))
    out = processor([numbered_clip(20)])["pixel_values"]
    assert out.shape == (1, 4, 1, 8, 8)
    assert out[0, :, 0, 0, 0].tolist() == pytest.approx([6, 8, 10, 12])  # span 7, start (20 - 7) // 2
    short = processor([numbered_clip(3)])["pixel_values"]
    assert short[0, :, 0, 0, 0].tolist() == pytest.approx([0, 2, 2, 2])


def test_values_channels_and_normalisation():
    white = np.full((2, 4, 4), 255, dtype=np.uint8)
    rgb = VideoProcessor(n_frames=2, image_size=4, channels=3, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    out = rgb([white])["pixel_values"]  # one channel repeated to three
    assert out.shape == (1, 2, 3, 4, 4)
    assert out[0, 0, :, 0, 0].tolist() == pytest.approx([1.0, 3.0, 1.0])
    grey = VideoProcessor(n_frames=2, image_size=4, channels=1, mean=(0.0,), std=(1.0,))
    colour = np.zeros((2, 4, 4, 3), dtype=np.float32)
    colour[..., 0] = 0.9  # floats are read as 0..1; three channels are averaged to one
    assert grey([colour])["pixel_values"][0, 0, 0, 0, 0].item() == pytest.approx(0.3)


def test_a_wide_clip_is_resized_by_its_shorter_side_and_centre_cropped():
    wide = np.zeros((1, 20, 40), dtype=np.float32)
    wide[:, :, 4:36] = 1.0  # 20x40 -> 10x20, of which the centre 10 columns (10:30 here) are kept
    wide[:, :, :4] = wide[:, :, 36:] = 5.0  # the cropped-off edges
    out = VideoProcessor(n_frames=1, image_size=10, channels=1, mean=(0,), std=(1,))([wide])["pixel_values"]
    assert out.shape == (1, 1, 1, 10, 10)
    torch.testing.assert_close(out, torch.ones_like(out))


def test_save_load_and_file_reading(tmp_path):
    processor = VideoProcessor(n_frames=3, frame_stride=2, image_size=6, channels=1, mean=(0.1,), std=(0.3,),
                               max_shift=2)
    assert not VideoProcessor.exists(tmp_path)
    processor.save(tmp_path)
    assert VideoProcessor.exists(tmp_path) and VideoProcessor.load(tmp_path) == processor
    clip = numbered_clip(9, 6)
    np.save(tmp_path / "clip.npy", clip)
    np.savez(tmp_path / "clip.npz", frames=clip)
    for name in ("clip.npy", "clip.npz"):
        np.testing.assert_array_equal(processor.read(tmp_path / name), clip)
    buffer = io.BytesIO()
    np.save(buffer, clip)
    np.testing.assert_array_equal(processor.decode(buffer.getvalue()), clip)


def one_line_error(call, *args) -> str:
    with pytest.raises(UserError) as err:
        call(*args)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_bad_clips_are_refused_in_one_line(tmp_path):
    processor = VideoProcessor(n_frames=2, image_size=4, channels=1)
    assert "does not exist" in one_line_error(processor.read, tmp_path / "missing.npy")
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 16)
    assert "numpy.save" in one_line_error(processor.read, tmp_path / "clip.mp4")
    (tmp_path / "bad.npy").write_bytes(b"not an array")
    assert "not a .npy or .npz" in one_line_error(processor.read, tmp_path / "bad.npy")
    assert "not a .npy or .npz" in one_line_error(processor.decode, b"\x93NUMPY garbage")
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 4, 4)), b=np.zeros((2, 4, 4)))
    assert "holds 2 arrays" in one_line_error(processor.read, tmp_path / "two.npz")
    assert "has shape (4, 4)" in one_line_error(processor, [np.zeros((4, 4))])
    assert "has shape (2, 4, 4, 5)" in one_line_error(processor, [np.zeros((2, 4, 4, 5))])
    assert "numeric array" in one_line_error(processor, [np.array([["a"]])])
    assert "no clips" in one_line_error(processor, [])
    assert "channels must be 1 or 3" in one_line_error(VideoProcessor, 8, 1, 224, 2)


def test_augmentation_shifts_every_frame_of_a_clip_alike_and_keeps_time_order():
    processor = VideoProcessor(n_frames=4, image_size=12, channels=1, mean=(0,), std=(1,), max_shift=3)
    clip = np.zeros((4, 12, 12), dtype=np.float32)
    for t in range(4):
        clip[t, 6, 3 + t] = 1.0  # a dot moving right one pixel per frame
    batch = processor([clip] * 8)
    assert processor.augment(batch, torch.Generator().manual_seed(0))["pixel_values"].shape == (8, 4, 1, 12, 12)
    shifted = processor.augment(batch, torch.Generator().manual_seed(0))["pixel_values"][:, :, 0]  # (B, T, H, W)
    moves = set()
    for row in shifted:
        dots = [divmod(int(frame.argmax()), 12) for frame in row]
        assert all(abs(y - 6) <= 3 for y, _ in dots)
        assert [x for _, x in dots] == [dots[0][1] + t for t in range(4)]  # still rightwards, one pixel a frame
        assert all(y == dots[0][0] for y, _ in dots)
        moves.add(dots[0])
    assert len(moves) > 1  # clips get different shifts
    assert VideoProcessor(max_shift=0).augment(batch, torch.Generator()) is batch
