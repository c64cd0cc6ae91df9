"""Audio in, AST's input out: WAV reading, resampling, the Kaldi log-mel filterbank and SpecAugment.

    WAV (8/16/32-bit PCM, any rate, mono or stereo) -> mono float in [-1, 1]
      -> resampled to `sampling_rate` (windowed-sinc, polyphase; numpy)
      -> frames of 25 ms every 10 ms (Kaldi's snip_edges: no padding at the ends)
      -> per frame: remove DC, pre-emphasis 0.97, Hann window, |FFT(512)|^2
      -> 128 triangular mel filters (Kaldi's mel scale 1127 ln(1 + f / 700), 20 Hz .. Nyquist)
      -> natural log (floor: float32 epsilon) -> zero-pad or trim to `max_length` frames
      -> (x - mean) / (2 * std) with AudioSet's mean and std.

This is `torchaudio.compliance.kaldi.fbank` as AST calls it (window_type="hanning", dither 0), which
Hugging Face's ASTFeatureExtractor reproduces in numpy when torchaudio is absent; tests hold the two
to 1e-4 on real recordings. Kaldi's default window is Povey's (`window="povey"`); AST's is Hann.

An item (what `read` and `decode` return, and what an .npy holds) is a 1-D waveform at the
processor's sampling rate: floats in [-1, 1], or integer PCM (scaled as in a WAV file).
"""

import dataclasses
import functools
import io
import math
import wave

import numpy as np
import torch

from ..errors import UserError
from .media import MediaProcessor, require_numeric

WINDOWS = ("hanning", "povey")
NORMALISATIONS = ("global", "utterance")
MEL_FLOOR = float(np.finfo(np.float32).eps)  # Kaldi's log floor
PCM_TYPES = {1: np.uint8, 2: np.int16, 4: np.int32}  # sample width in bytes -> stored type


# -- reading ----------------------------------------------------------------------------------

def read_wav(source, name: str) -> tuple:
    """A PCM WAV file (path or file object) -> (mono samples in [-1, 1] as float32, sampling rate)."""
    try:
        with wave.open(source, "rb") as wav:
            width, channels, rate = wav.getsampwidth(), wav.getnchannels(), wav.getframerate()
            data = wav.readframes(wav.getnframes())
    except FileNotFoundError:
        raise UserError(f"audio file {name} does not exist") from None
    except (wave.Error, EOFError, OSError) as err:
        raise UserError(f"{name} is not a readable PCM WAV file ({err}); convert it to 16-bit PCM WAV") from None
    if width not in PCM_TYPES:
        raise UserError(f"{name} has {8 * width}-bit samples; attnlab reads 8, 16 or 32-bit PCM WAV")
    frame_bytes = width * channels
    samples = np.frombuffer(data[:len(data) - len(data) % frame_bytes], dtype=PCM_TYPES[width])
    if samples.size == 0:
        raise UserError(f"{name} holds no audio samples")
    return pcm_to_float(samples).reshape(-1, channels).mean(axis=1), rate


# -- resampling ---------------------------------------------------------------------------------

def resample(samples: np.ndarray, orig: int, new: int, zero_crossings: int = 16, rolloff: float = 0.945,
             beta: float = 8.6) -> np.ndarray:
    """(N,) at `orig` Hz -> (ceil(N * new / orig),) at `new` Hz by band-limited interpolation.

    Output sample n sits at input position p = n * orig / new and is sum_j x[j] * h(p - j), where h is
    a low-pass sinc (cutoff: `rolloff` of the lower Nyquist frequency) under a Kaiser window spanning
    `zero_crossings` of its zeros on each side. With up / down = new / orig in lowest terms, p takes
    only `up` fractional offsets, so each phase is one strided dot product with a fixed kernel.
    """
    if orig == new:
        return samples.astype(np.float32)
    g = math.gcd(orig, new)
    up, down = new // g, orig // g
    cutoff = rolloff * min(1.0, up / down)  # as a fraction of the input's Nyquist frequency
    half_width = zero_crossings / cutoff  # in input samples
    taps = math.ceil(half_width)
    offsets = np.arange(-taps + 1, taps + 1)  # j - floor(p)
    padded = np.pad(samples.astype(np.float64), (taps, taps + down))
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * taps)  # windows[b + 1] = x[b + offsets]
    n_out = math.ceil(len(samples) * up / down)
    out = np.empty(n_out)
    for phase in range(min(up, n_out)):
        first, fraction = divmod(phase * down, up)
        t = fraction / up - offsets  # p - j for each tap, (2 * taps,)
        kernel = cutoff * np.sinc(cutoff * t) * _kaiser(t / half_width, beta)
        count = len(range(phase, n_out, up))
        out[phase::up] = windows[first + 1:first + 1 + count * down:down][:count] @ kernel
    return out.astype(np.float32)


def _kaiser(x: np.ndarray, beta: float) -> np.ndarray:
    """The Kaiser window at positions x in [-1, 1] (zero outside)."""
    inside = np.clip(1 - x ** 2, 0, None)
    return np.where(np.abs(x) <= 1, np.i0(beta * np.sqrt(inside)) / np.i0(beta), 0.0)


# -- the log-mel filterbank -------------------------------------------------------------------

def kaldi_mel(hz):
    return 1127.0 * np.log(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_filters(f: "AudioProcessor") -> np.ndarray:
    """(n_fft // 2 + 1, num_mel_bins) triangles, equally spaced and linear on Kaldi's mel scale."""
    edges = np.linspace(kaldi_mel(f.low_freq), kaldi_mel(f.sampling_rate / 2), f.num_mel_bins + 2)
    bins = kaldi_mel(np.arange(f.n_fft // 2 + 1) * f.sampling_rate / f.n_fft)[:, None]  # (K, 1)
    left, center, right = edges[:-2], edges[1:-1], edges[2:]
    rising, falling = (bins - left) / (center - left), (right - bins) / (right - center)
    return np.maximum(0.0, np.minimum(rising, falling))


def frame_window(f: "AudioProcessor") -> np.ndarray:
    hann = np.hanning(f.frame_length)  # symmetric, as Kaldi's
    return hann if f.window == "hanning" else hann ** 0.85


def log_mel(samples: np.ndarray, f: "AudioProcessor") -> np.ndarray:
    """(N,) samples at f.sampling_rate -> (frames, num_mel_bins) float32 log mel energies, one frame
    of f.frame_length every f.frame_shift samples (none for a clip shorter than one frame)."""
    if len(samples) < f.frame_length:
        return np.zeros((0, f.num_mel_bins), dtype=np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(samples.astype(np.float64), f.frame_length)[::f.frame_shift]
    frames = frames - frames.mean(axis=1, keepdims=True)  # (T, L)
    frames = np.concatenate([frames[:, :1] * (1 - f.preemphasis),
                             frames[:, 1:] - f.preemphasis * frames[:, :-1]], axis=1)
    power = np.abs(np.fft.rfft(frames * f.taper, n=f.n_fft)) ** 2  # (T, n_fft // 2 + 1)
    return np.log(np.maximum(power @ f.filters, MEL_FLOOR)).astype(np.float32)


def fit_length(features: np.ndarray, length: int) -> np.ndarray:
    """(T, F) -> (length, F): trimmed, or padded with zero rows."""
    return np.pad(features[:length], ((0, max(0, length - len(features))), (0, 0)))


def pcm_to_float(samples: np.ndarray) -> np.ndarray:
    """Integer PCM samples -> float32 in [-1, 1] (8-bit PCM is unsigned, wider is signed)."""
    scaled = samples.astype(np.float64)
    if samples.dtype == np.uint8:
        return ((scaled - 128) / 128).astype(np.float32)
    return (scaled / 2.0 ** (8 * samples.dtype.itemsize - 1)).astype(np.float32)


# -- the processor ----------------------------------------------------------------------------

@dataclasses.dataclass
class AudioProcessor(MediaProcessor):
    """WAV files or waveforms -> AST's input_values (B, max_length, num_mel_bins). Its fields are
    the run config's tokenizer section of audio_classification (processor.json in a checkpoint)."""

    modality = "audio"
    suffixes = (".wav",)
    num_mel_bins: int = None  # None in a run config: the model's
    max_length: int = None  # frames after padding or trimming (10 ms each); None: the model's
    sampling_rate: int = 16000
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    window: str = "hanning"
    preemphasis: float = 0.97
    low_freq: float = 20.0  # Hz; the top filter ends at the Nyquist frequency
    normalize: str = "global"  # (x - mean) / (2 * std); "utterance": each clip's own mean per bin and std
    mean: float = -4.2677393  # AudioSet's log-mel statistics, AST's normalisation
    std: float = 4.5689974
    # training-time augmentation (`augment`), off at 0: SpecAugment masks, a random roll, noise
    time_mask: int = 0  # widest time mask, in frames
    freq_mask: int = 0  # widest frequency mask, in mel bins
    n_masks: int = 1  # masks of each kind per example
    shift: int = 0  # largest roll along time, in frames, either way
    freq_shift: int = 0  # largest shift along the mel bins, either way, edges repeated (a crude vocal-tract warp)
    noise: float = 0.0  # standard deviation of Gaussian noise added to the normalised features

    def validate(self):
        self.require_positive("sampling_rate", "n_masks")
        for name in ("num_mel_bins", "max_length"):
            if getattr(self, name) is not None:
                self.require_positive(name)
        self.require_choice("window", WINDOWS)
        self.require_choice("normalize", NORMALISATIONS)
        for name in ("time_mask", "freq_mask", "shift", "freq_shift"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise self.invalid(f"{name} must be an integer >= 0, got {getattr(self, name)!r}")
        if not 0 < self.frame_shift_ms <= self.frame_length_ms:
            raise self.invalid("frame_shift_ms must be > 0 and at most frame_length_ms")
        if not 0 <= self.low_freq < self.sampling_rate / 2:
            raise self.invalid(f"low_freq must be in [0, {self.sampling_rate / 2}) Hz, got {self.low_freq}")
        if self.std <= 0 or self.noise < 0:
            raise self.invalid("std must be > 0 and noise >= 0")
        self.require_fraction("preemphasis")

    @property
    def frame_length(self) -> int:
        return round(self.sampling_rate * self.frame_length_ms / 1000)  # 400 samples at 16 kHz

    @property
    def frame_shift(self) -> int:
        return round(self.sampling_rate * self.frame_shift_ms / 1000)  # 160

    @property
    def n_fft(self) -> int:
        return 2 ** math.ceil(math.log2(self.frame_length))  # 512

    @classmethod
    def model_settings(cls, config) -> dict:
        return {"num_mel_bins": config.num_mel_bins, "max_length": config.max_length}

    @functools.cached_property
    def filters(self) -> np.ndarray:
        return mel_filters(self)

    @functools.cached_property
    def taper(self) -> np.ndarray:
        """(frame_length,) the window function's values."""
        return frame_window(self)

    # raw input -> samples at the processor's rate
    def decode_file(self, data: bytes, name: str) -> np.ndarray:
        """The bytes of a WAV file -> (N,) float32 samples at the processor's sampling rate."""
        samples, rate = read_wav(io.BytesIO(data), name)
        return resample(samples, rate, self.sampling_rate)

    def check_item(self, item: np.ndarray, name: str) -> np.ndarray:
        item = require_numeric(item, name, "waveform")
        if item.ndim != 1:
            raise UserError(f"{name}: a waveform must be a 1-D array of samples, got shape {item.shape}")
        return pcm_to_float(item) if item.dtype.kind in "ui" else item.astype(np.float32)

    def example_items(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """Random waveforms (N, samples) just long enough for max_length frames."""
        samples = self.frame_shift * (self.max_length - 1) + self.frame_length
        return rng.normal(0, 0.1, size=(count, samples)).astype(np.float32)

    # samples -> model input
    def features_of(self, samples: np.ndarray) -> np.ndarray:
        """(N,) samples -> (max_length, num_mel_bins) normalised log mel features. Global
        normalisation pads first (AST's order); per-utterance normalisation uses the clip's own
        frames, then pads with zeros (its mean)."""
        fbank = log_mel(samples, self)[:self.max_length]  # (T, F)
        if self.normalize == "global":
            return (fit_length(fbank, self.max_length) - self.mean) / (2 * self.std)
        if len(fbank):
            fbank = (fbank - fbank.mean(axis=0)) / (2 * fbank.std() + 1e-5)
        return fit_length(fbank, self.max_length)

    def __call__(self, items: list) -> dict:
        """A list of (N_i,) sample arrays -> {"input_values": (B, max_length, num_mel_bins)}."""
        return {"input_values": torch.from_numpy(np.stack([self.features_of(x) for x in items])).float()}

    def augment(self, batch: dict, generator: torch.Generator) -> dict:
        """Training only: per example, `n_masks` time and frequency masks (set to 0, the mean after
        normalisation) of random width up to time_mask / freq_mask, a roll along time of up to
        `shift` frames, a shift along the mel bins of up to `freq_shift`, and Gaussian noise of std `noise`."""
        x = batch["input_values"]  # (B, T, F)
        rows, frames, bins = x.shape
        if self.shift:
            rolls = torch.randint(-self.shift, self.shift + 1, (rows,), generator=generator).tolist()
            x = torch.stack([row.roll(r, dims=0) for row, r in zip(x, rolls)])
        if self.freq_shift:
            moves = torch.randint(-self.freq_shift, self.freq_shift + 1, (rows, 1), generator=generator)
            source = (torch.arange(bins) - moves).clamp(0, bins - 1)  # (B, F): bin f reads bin f - move
            x = x.gather(2, source[:, None, :].expand(rows, frames, bins))
        time = _masks(rows, frames, self.time_mask, self.n_masks, generator)[:, :, None]  # (B, T, 1)
        freq = _masks(rows, bins, self.freq_mask, self.n_masks, generator)[:, None, :]  # (B, 1, F)
        x = x.masked_fill(time | freq, 0.0)
        if self.noise:
            x = x + self.noise * torch.randn(x.shape, generator=generator)
        return {**batch, "input_values": x}


def _masks(rows: int, size: int, widest: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """(rows, size) bool: `count` spans per row, each of width uniform in [0, widest], placed uniformly."""
    widths = torch.randint(0, min(widest, size) + 1, (rows, count, 1), generator=generator)
    starts = (torch.rand(rows, count, 1, generator=generator) * (size - widths + 1)).long()
    positions = torch.arange(size)
    return ((positions >= starts) & (positions < starts + widths)).any(dim=1)
