"""The audio front end: WAV reading, resampling, Kaldi log-mel features equal to Hugging Face's
ASTFeatureExtractor on real recordings, SpecAugment, and one-line errors for bad files."""

import io
import wave

import numpy as np
import pytest
import torch
from transformers import ASTFeatureExtractor
from transformers.models.audio_spectrogram_transformer import feature_extraction_audio_spectrogram_transformer

from attnlab.errors import UserError
from attnlab.processors.audio import AudioProcessor, read_wav, resample
from attnlab.processors.media import PROCESSOR_FILE, npy_bytes


def wav_bytes(samples: np.ndarray, rate: int, width: int = 2) -> bytes:
    """(N,) or (N, channels) integer samples -> the bytes of a PCM WAV file."""
    samples = samples if samples.ndim == 2 else samples[:, None]
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(samples.shape[1])
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(samples.astype({1: np.uint8, 2: np.int16, 4: np.int32}[width]).tobytes())
    return buffer.getvalue()


def test_features_equal_hugging_face_on_real_recordings(data_dir):
    # Hugging Face computes these in numpy when torchaudio is absent: that is the path compared here
    assert not feature_extraction_audio_spectrogram_transformer.is_speech_available()
    files = sorted((data_dir / "fsdd" / "train").glob("*.wav"))[::150]  # 18 clips, every speaker
    processor = AudioProcessor(num_mel_bins=128, max_length=60)  # trims the longest clips, pads the rest
    clips = [processor.read(path) for path in files]
    assert min(len(c) for c in clips) < 60 * 160 < max(len(c) for c in clips)
    ours = processor(clips)["input_values"]  # (B, 60, 128)
    reference = ASTFeatureExtractor(max_length=60)(clips, sampling_rate=16000, return_tensors="pt")["input_values"]
    assert ours.shape == reference.shape == (len(files), 60, 128)
    assert (ours - reference).abs().max() <= 1e-4


@pytest.mark.parametrize("orig,new,freq", [(8000, 16000, 1000.0), (44100, 16000, 440.0), (16000, 8000, 700.0)])
def test_resampling_keeps_a_tone_in_band(orig, new, freq):
    tone = np.sin(2 * np.pi * freq * np.arange(orig) / orig)
    out = resample(tone, orig, new)
    expected = np.sin(2 * np.pi * freq * np.arange(new) / new)
    assert len(out) == new
    assert np.abs(out - expected)[100:-100].max() < 1e-4  # the ends see zeros beyond the clip


def test_resampling_down_removes_what_the_new_rate_cannot_hold():
    tone = np.sin(2 * np.pi * 6000 * np.arange(16000) / 16000)  # above 8 kHz audio's 4 kHz Nyquist
    assert np.abs(resample(tone, 16000, 8000))[100:-100].max() < 1e-3


def test_wav_reading_scales_8_16_32_bit_and_mixes_stereo_to_mono():
    left, right = np.array([0, 16384, -32768]), np.array([16384, 16384, 0])
    samples, rate = read_wav(io.BytesIO(wav_bytes(np.stack([left, right], 1), 8000)), "x")
    assert rate == 8000 and np.allclose(samples, [0.25, 0.5, -0.5])
    eight, _ = read_wav(io.BytesIO(wav_bytes(np.array([128, 255, 0]), 8000, width=1)), "x")
    assert np.allclose(eight, [0, 127 / 128, -1])
    wide, _ = read_wav(io.BytesIO(wav_bytes(np.array([2 ** 30, -(2 ** 31)]), 8000, width=4)), "x")
    assert np.allclose(wide, [0.5, -1])


def test_decode_equals_read_and_resamples(tmp_path):
    data = wav_bytes((np.sin(np.arange(4000) / 5) * 20000).astype(np.int16), 8000)
    (tmp_path / "a.wav").write_bytes(data)
    processor = AudioProcessor()
    decoded = processor.decode(data)
    assert len(decoded) == 8000 and np.array_equal(decoded, processor.read(tmp_path / "a.wav"))
    # an .npy holds a waveform at the processor's rate: floats as they are, integer PCM scaled
    assert np.allclose(processor.decode(npy_bytes(np.array([16384, -32768], dtype=np.int16))), [0.5, -1])
    assert np.array_equal(processor.decode(npy_bytes(decoded)), decoded)


def test_bad_audio_is_one_line(tmp_path):
    (tmp_path / "text.wav").write_text("not audio")
    (tmp_path / "empty.wav").write_bytes(wav_bytes(np.zeros(0), 8000))
    processor = AudioProcessor()
    cases = {tmp_path / "missing.wav": "does not exist", tmp_path / "text.wav": "not a readable PCM WAV",
             tmp_path / "empty.wav": "holds no audio samples"}
    for path, message in cases.items():
        with pytest.raises(UserError, match=message) as err:
            processor.read(path)
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="not a readable PCM WAV"):
        processor.decode(b"RIFF\x00\x00")
    with pytest.raises(UserError, match="window"):
        AudioProcessor(window="rectangular")
    with pytest.raises(UserError, match="1-D array"):
        processor.check_item(np.zeros((2, 3)), "x")


def test_a_clip_shorter_than_one_frame_is_all_padding():
    processor = AudioProcessor(num_mel_bins=128, max_length=8)
    values = processor([np.zeros(100, dtype=np.float32)])["input_values"]
    assert torch.allclose(values, torch.full((1, 8, 128), -processor.mean / (2 * processor.std)))


def test_augment_masks_rolls_and_adds_noise_reproducibly():
    settings = dict(max_length=50, num_mel_bins=40, time_mask=10, freq_mask=8, n_masks=2, shift=5, noise=0.1)
    batch = {"input_values": torch.randn(6, 50, 40) + 3, "labels": torch.arange(6)}
    augmented = AudioProcessor(**settings).augment(batch, torch.Generator().manual_seed(1))
    again = AudioProcessor(**settings).augment(batch, torch.Generator().manual_seed(1))
    assert torch.equal(augmented["input_values"], again["input_values"])
    assert augmented["labels"] is batch["labels"] and augmented["input_values"].shape == (6, 50, 40)
    near_zero = augmented["input_values"].abs() < 0.6  # masked cells hold noise only; the rest is near 3
    assert near_zero.any() and near_zero.float().mean() < 0.6
    ramp = {"input_values": torch.arange(40.0).expand(3, 50, 40)}  # each frame: bin f holds f
    warped = AudioProcessor(max_length=50, num_mel_bins=40, freq_shift=3).augment(ramp, torch.Generator())
    moves = warped["input_values"][:, 0, 20] - 20  # the shift of each example, the same for all its frames
    assert moves.abs().max() <= 3 and torch.equal(warped["input_values"][:, :, 20:30] - 20 - moves[:, None, None],
                                                  ramp["input_values"][:, :, :10])
    plain = AudioProcessor(max_length=50, num_mel_bins=40)
    assert torch.equal(plain.augment(batch, torch.Generator())["input_values"], batch["input_values"])


def test_settings_round_trip(tmp_path):
    processor = AudioProcessor(max_length=100, num_mel_bins=64, time_mask=12)
    processor.save(tmp_path)
    assert AudioProcessor.exists(tmp_path) and AudioProcessor.load(tmp_path) == processor
    (tmp_path / PROCESSOR_FILE).write_text("{")
    with pytest.raises(UserError, match="not readable JSON"):
        AudioProcessor.load(tmp_path)


def test_utterance_normalisation_removes_loudness_and_pads_with_the_mean():
    clip = np.random.default_rng(0).normal(0, 0.1, 4000).astype(np.float32)  # every mel bin well above the floor
    processor = AudioProcessor(sampling_rate=8000, num_mel_bins=32, max_length=60, normalize="utterance")
    loud, quiet = processor([clip, clip / 20])["input_values"]
    frames = (len(clip) - processor.frame_length) // processor.frame_shift + 1  # 48 real frames
    assert torch.allclose(loud, quiet, atol=1e-4)  # a gain is a constant in log-mel space
    assert torch.allclose(loud[:frames].mean(0), torch.zeros(32), atol=1e-5)
    assert torch.equal(loud[frames:], torch.zeros(60 - frames, 32))
    with pytest.raises(UserError, match="normalize"):
        AudioProcessor(normalize="peak")
