"""The video processor: clip files in, (B, T, C, H, W) normalised frames out; user mistakes are one line."""

import io

import numpy as np
import pytest
import torch

from attnlab.errors import UserError
from attnlab.models.base import preset
from attnlab.processors import MEDIA_PROCESSORS
from attnlab.processors.media import npy_bytes
from attnlab.processors.video import VideoProcessor


def numbered_clip(frames=20, size=8):
    """Frame i is filled with the value i (uint8), so sampled frames show their index."""
    return np.broadcast_to(np.arange(frames, dtype=np.uint8)[:, None, None], (frames, size, size)).copy()


def test_frames_are_sampled_centred_at_the_stride_and_short_clips_repeat_their_last():
    processor = VideoProcessor(n_frames=4, frame_stride=2, image_size=8, channels=1, mean=[0], std=[1 / 255])
    out = processor([numbered_clip(20)])["pixel_values"]
    assert out.shape == (1, 4, 1, 8, 8)
    assert out[0, :, 0, 0, 0].tolist() == pytest.approx([6, 8, 10, 12])  # span 7, start (20 - 7) // 2
    short = processor([numbered_clip(3)])["pixel_values"]
    assert short[0, :, 0, 0, 0].tolist() == pytest.approx([0, 2, 2, 2])


def test_values_channels_and_normalisation():
    white = np.full((2, 4, 4), 255, dtype=np.uint8)
    rgb = VideoProcessor(n_frames=2, image_size=4, channels=3, mean=[0.5, 0.25, 0.0], std=[0.5, 0.25, 1.0])
    out = rgb([white])["pixel_values"]  # one channel repeated to three
    assert out.shape == (1, 2, 3, 4, 4)
    assert out[0, 0, :, 0, 0].tolist() == pytest.approx([1.0, 3.0, 1.0])
    grey = VideoProcessor(n_frames=2, image_size=4, channels=1, mean=[0.0], std=[1.0])
    colour = np.zeros((2, 4, 4, 3), dtype=np.float32)
    colour[..., 0] = 0.9  # floats are read as 0..1; three channels are averaged to one
    assert grey([colour])["pixel_values"][0, 0, 0, 0, 0].item() == pytest.approx(0.3)


def test_a_wide_clip_is_resized_by_its_shorter_side_and_centre_cropped():
    wide = np.zeros((1, 20, 40), dtype=np.float32)
    wide[:, :, 4:36] = 1.0  # 20x40 -> 10x20, of which the centre 10 columns (10:30 here) are kept
    wide[:, :, :4] = wide[:, :, 36:] = 5.0  # the cropped-off edges
    out = VideoProcessor(n_frames=1, image_size=10, channels=1, mean=[0], std=[1])([wide])["pixel_values"]
    assert out.shape == (1, 1, 1, 10, 10)
    torch.testing.assert_close(out, torch.ones_like(out))


def test_it_is_the_video_modality_made_for_the_model_and_fitted_to_the_training_clips():
    assert MEDIA_PROCESSORS["video"] is VideoProcessor
    config = preset("vivit-tiny")
    processor = VideoProcessor.for_model(config, VideoProcessor(frame_stride=2))
    assert (processor.n_frames, processor.image_size, processor.channels) == (4, 16, 3)
    with pytest.raises(UserError, match="n_frames=8 differs from the model's 4"):
        VideoProcessor.for_model(config, VideoProcessor(n_frames=8))
    clips = list(np.random.default_rng(0).uniform(0.2, 0.6, size=(5, 6, 16, 16)).astype(np.float32))
    fitted = processor.fit(clips)
    assert fitted.mean == pytest.approx([0.4] * 3, abs=0.01) and fitted.std == pytest.approx([0.115] * 3, abs=0.01)
    out = fitted(clips)["pixel_values"]
    assert out.shape == (5, 4, 3, 16, 16) and out.mean().abs() < 0.05 and (out.std() - 1).abs() < 0.05


def test_save_load_and_file_reading(tmp_path):
    processor = VideoProcessor(n_frames=3, frame_stride=2, image_size=6, channels=1, mean=[0.1], std=[0.3], shift=1)
    assert not VideoProcessor.exists(tmp_path)
    processor.save(tmp_path)
    assert VideoProcessor.exists(tmp_path) and VideoProcessor.load(tmp_path) == processor
    clip = numbered_clip(9, 6)
    np.save(tmp_path / "clip.npy", clip)
    np.savez(tmp_path / "clip.npz", frames=clip)
    for name in ("clip.npy", "clip.npz"):
        np.testing.assert_array_equal(processor.read(tmp_path / name), clip)
    np.testing.assert_array_equal(processor.decode(npy_bytes(clip)), clip)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, clip=clip)
    np.testing.assert_array_equal(processor.decode(buffer.getvalue()), clip)


def one_line_error(call, *args) -> str:
    with pytest.raises(UserError) as err:
        call(*args)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_bad_clips_and_settings_are_refused_in_one_line(tmp_path):
    processor = VideoProcessor(n_frames=2, image_size=4, channels=1)
    assert "does not exist" in one_line_error(processor.read, tmp_path / "missing.npy")
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 16)
    assert "must end in .npz or .npy" in one_line_error(processor.read, tmp_path / "clip.mp4")
    (tmp_path / "bad.npz").write_bytes(b"not an array")
    assert "save the frames with numpy.save" in one_line_error(processor.read, tmp_path / "bad.npz")
    assert "not a readable .npy" in one_line_error(processor.decode, b"\x93NUMPY garbage")
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 4, 4)), b=np.zeros((2, 4, 4)))
    assert "holds 2 arrays" in one_line_error(processor.read, tmp_path / "two.npz")
    assert "got shape (4, 4)" in one_line_error(processor.decode, npy_bytes(np.zeros((4, 4))))
    assert "got shape (2, 4, 4, 5)" in one_line_error(processor.decode, npy_bytes(np.zeros((2, 4, 4, 5))))
    assert "array of numbers" in one_line_error(processor.decode, npy_bytes(np.array([["a"]])))
    assert "NaN" in one_line_error(processor, [np.full((2, 4, 4), np.nan)])
    assert "no clips" in one_line_error(processor, [])
    assert "channels=2 is not one of 1, 3" in one_line_error(VideoProcessor, 8, 224, 2)
    assert "frame_stride must be a positive" in one_line_error(VideoProcessor, 8, 224, 1, 0)


def test_augmentation_shifts_every_frame_of_a_clip_alike_and_keeps_time_order():
    processor = VideoProcessor(n_frames=4, image_size=12, channels=1, mean=[0], std=[1], shift=3)
    clip = np.zeros((4, 12, 12), dtype=np.float32)
    for t in range(4):
        clip[t, 6, 3 + t] = 1.0  # a dot moving right one pixel per frame
    batch = processor([clip] * 8)
    shifted = processor.augment(batch, torch.Generator().manual_seed(0))["pixel_values"][:, :, 0]  # (B, T, H, W)
    assert shifted.shape == (8, 4, 12, 12)
    moves = set()
    for row in shifted:
        dots = [divmod(int(frame.argmax()), 12) for frame in row]
        assert all(abs(y - 6) <= 3 for y, _ in dots)
        assert [x for _, x in dots] == [dots[0][1] + t for t in range(4)]  # still rightwards, one pixel a frame
        assert all(y == dots[0][0] for y, _ in dots)
        moves.add(dots[0])
    assert len(moves) > 1  # clips get different shifts
    assert VideoProcessor(shift=0).augment(batch, torch.Generator()) is batch
