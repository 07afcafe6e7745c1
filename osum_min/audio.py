"""Audio file -> 16 kHz mono waveform -> OSUM's log-mel features (docs/original.md §6), without torchaudio or librosa.

The original loads with torchaudio, averages channels, resamples with torchaudio's windowed-sinc `Resample` and
uses a librosa Slaney mel filter bank. Each of those is rebuilt here so the numbers match without the libraries.
"""

import functools
import math
import os
import re

import numpy as np
import soundfile
import torch

from .files import FileError, open_file

SAMPLE_RATE = 16000
HOP = 160  # 10 ms
N_FFT = 400  # 25 ms
N_MELS = 80
MIN_SAMPLES = N_FFT  # one analysis window; reflect padding of the STFT needs more than N_FFT // 2 samples
# Files taken as audio by their name (infer.py walks directories with it); anything libsndfile reads also loads.
AUDIO_SUFFIXES = {
    ".wav",
    ".flac",
    ".mp3",
    ".ogg",
    ".oga",
    ".opus",
    ".aiff",
    ".aif",
    ".au",
    ".w64",
    ".caf",
}

# torchaudio.transforms.Resample defaults
LOWPASS_FILTER_WIDTH = 6
ROLLOFF = 0.99
# A file rate outside this range is a broken header, not audio (1 Hz once turned a 4 KB file into 2000 s).
MIN_FILE_RATE, MAX_FILE_RATE = 1000, 384000
# Largest polyphase resampling kernel, in taps (8 MB while built in float64): every common rate fits.
MAX_KERNEL_TAPS = 1 << 20
# samples read at once, all channels together (4 MB of float32)
READ_BLOCK_FRAMES = 1 << 20
# Float files store samples at full scale 1 (int32-scaled floats reach 2e9); from about 1e17 a frame's power
# spectrum overflows float32 and every log-mel value is NaN (issue 23). Far above anything recorded, far below that.
MAX_SAMPLE_MAGNITUDE = 1e12

# libsndfile notes a WAV whose header promises more data than the file holds as "data : 32000 (should be 15978)".
_SHORT_DATA_CHUNK = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# written by tools that stream a wav and never patch its header
_STREAMING_DATA_SIZE = 0xFFFFFFFF


class AudioError(FileError):
    """An audio input we refuse; the message is one line naming the file and the problem."""

    def __init__(self, source: str, problem: str):
        super().__init__(source, problem)
        self.source = self.path


def _source_name(path_or_file) -> str:
    if isinstance(path_or_file, (str, os.PathLike)):
        return os.fspath(path_or_file)
    return getattr(path_or_file, "name", None) or f"<{type(path_or_file).__name__}>"


class AudioTooLong(AudioError):
    """Audio longer than a caller's cap, found from the header (before decoding) or while
    decoding (a header that lies)."""

    def __init__(
        self, source: str, seconds: float, max_seconds: float, known: bool = True
    ):
        self.seconds, self.max_seconds = seconds, max_seconds
        digits = 1 if f"{seconds:.1f}" != f"{max_seconds:.1f}" else 3
        amount = f"{seconds:.{digits}f} s" if known else f"more than {max_seconds:g} s"
        super().__init__(
            source, f"{amount} of audio is over the limit of {max_seconds:g} s"
        )


def _read_mono(
    audio: soundfile.SoundFile, name: str, limit: float = math.inf
) -> np.ndarray:
    """(frames,) float32, the channel mean, block by block up to `limit` frames: memory
    follows one channel of the audio actually there, not the header's frame count nor its
    channels, and formats libsndfile cannot seek in (G.721 .au) read too. Each block is
    checked before it is averaged (a channel's overflow is not hidden by another's)."""
    blocks, left, most = [], limit, max(1, READ_BLOCK_FRAMES // audio.channels)
    while left > 0 and len(
        block := audio.read(int(min(most, left)), dtype="float32", always_2d=True)
    ):
        check_samples(block, name)
        # (N, C) -> (N,), the channel mean in float32 like the original
        blocks.append(torch.from_numpy(block).T.mean(dim=0).numpy())
        left -= len(block)
    return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)


def _read(
    path_or_file,
    name: str,
    span: tuple[float, float] | None = None,
    max_seconds: float | None = None,
) -> tuple[np.ndarray, int]:
    """(frames,) float32 mono as libsndfile scales it (int16 / 32768, uint8 (x-128)/128, ...), like torchaudio;
    with `span`, only the frames from its start to its end second; with `max_seconds`, refused from the header
    before anything is decoded, and decoding stops past it. A path is opened through osum_min.files (a
    regular file, never a FIFO or device); whatever soundfile or numpy raise for a file they cannot read becomes an
    AudioError."""
    fd = None
    if isinstance(path_or_file, (str, os.PathLike)):
        try:
            fd = open_file(path_or_file, "audio file")
        except FileError as err:
            raise AudioError(name, err.problem) from None
    try:
        with soundfile.SoundFile(
            path_or_file if fd is None else fd, closefd=False
        ) as audio:
            declared_frames = audio.frames
            for declared, present in _SHORT_DATA_CHUNK.findall(audio.extra_info):
                if (
                    int(present) < int(declared)
                    and int(declared) != _STREAMING_DATA_SIZE
                ):
                    raise AudioError(
                        name,
                        f"truncated: the header promises {declared} bytes of audio, the file holds {present}",
                    )
            sample_rate = audio.samplerate
            if span is not None:
                first, declared_frames = _span_frames(
                    span, sample_rate, declared_frames, name
                )
                audio.seek(first)
            limit = declared_frames if span is not None else math.inf
            if max_seconds is not None:
                if declared_frames > max_seconds * sample_rate:
                    raise AudioTooLong(name, declared_frames / sample_rate, max_seconds)
                limit = min(limit, math.floor(max_seconds * sample_rate) + 1)
            samples = _read_mono(audio, name, limit)
    except AudioError:
        raise
    except soundfile.SoundFileError as err:
        # libsndfile's words, without the file name again
        problem = getattr(err, "error_string", str(err))
        raise AudioError(name, f"not a readable audio file ({problem})") from None
    except Exception as err:  # noqa: BLE001  soundfile and numpy raise ValueError, MemoryError, ... for odd files
        raise AudioError(
            name, f"not a readable audio file ({type(err).__name__}: {err})"
        ) from None
    finally:
        if fd is not None:
            os.close(fd)
    if max_seconds is not None and len(samples) > max_seconds * sample_rate:
        raise AudioTooLong(name, len(samples) / sample_rate, max_seconds, known=False)
    if len(samples) < declared_frames:
        raise AudioError(
            name,
            f"truncated: the header promises {declared_frames} frames, only {len(samples)} could be decoded",
        )
    return samples, sample_rate


def _span_frames(
    span: tuple[float, float], sample_rate: int, frames: int, name: str
) -> tuple[int, int]:
    """The first frame and the frame count of a (start, end) span in seconds. It must start inside the audio; an
    end past the audio's is cut there, as the original's torchaudio.load(frame_offset, num_frames) cuts it."""
    start, end = (float(t) for t in span)
    if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
        raise AudioError(
            name,
            f"segment {start:g}-{end:g} s is not a span of time (0 <= start < end)",
        )
    first, last = round(start * sample_rate), min(round(end * sample_rate), frames)
    if first >= last:
        raise AudioError(
            name,
            f"segment {start:g}-{end:g} s starts after the audio's end ({frames / sample_rate:.3f} s)",
        )
    return first, last - first


def check_samples(samples: np.ndarray, name: str) -> None:
    """Samples the features can be computed from: some, all finite, none beyond MAX_SAMPLE_MAGNITUDE."""
    if samples.size == 0:
        raise AudioError(name, "contains no audio samples")
    if not np.isfinite(samples).all():
        raise AudioError(name, "contains NaN or infinite samples")
    if (peak := float(np.abs(samples).max())) > MAX_SAMPLE_MAGNITUDE:
        raise AudioError(
            name,
            f"samples up to {peak:.3g}, not audio (full scale is 1; beyond "
            f"{MAX_SAMPLE_MAGNITUDE:.0e} the log-mel features overflow)",
        )


def load_audio(
    path_or_file,
    sample_rate: int = SAMPLE_RATE,
    span: tuple[float, float] | None = None,
    max_seconds: float | None = None,
) -> torch.Tensor:
    """Read any soundfile-readable audio (path or file-like) as a (samples,) float32 mono waveform at `sample_rate`;
    with `span`, the (start, end) seconds of it (one utterance of a long recording); longer than `max_seconds`:
    AudioTooLong, before decoding where the header says so."""
    name = _source_name(path_or_file)
    samples, file_rate = _read(path_or_file, name, span, max_seconds)
    check_samples(samples, name)
    if not MIN_FILE_RATE <= file_rate <= MAX_FILE_RATE:
        raise AudioError(
            name,
            f"implausible sample rate {file_rate} Hz in the header "
            f"(expected {MIN_FILE_RATE} to {MAX_FILE_RATE} Hz)",
        )
    wav = resample(torch.from_numpy(samples), file_rate, sample_rate)
    if len(wav) < MIN_SAMPLES * sample_rate // SAMPLE_RATE:
        raise AudioError(
            name,
            f"too short: {len(wav) / sample_rate * 1000:.1f} ms; features need at least "
            f"{MIN_SAMPLES * 1000 // SAMPLE_RATE} ms",
        )
    return wav


def header_seconds(path) -> float:
    """A file's duration from its header, for sorting by length; 0.0 for anything load_audio will refuse."""
    try:
        fd = open_file(path, "audio file")
    except FileError:
        return 0.0
    try:
        with soundfile.SoundFile(fd, closefd=False) as audio:
            return audio.frames / audio.samplerate
    except Exception:  # noqa: BLE001  unreadable files sort anywhere; load_audio names the problem later
        return 0.0
    finally:
        os.close(fd)


def _kernel_width(orig_rate: int, new_rate: int) -> int:
    """Input samples each side of an output: the sinc's zero crossings up to LOWPASS_FILTER_WIDTH."""
    return math.ceil(
        LOWPASS_FILTER_WIDTH * orig_rate / (min(orig_rate, new_rate) * ROLLOFF)
    )


def _kernel_taps(orig_rate: int, new_rate: int) -> int:
    return new_rate * (2 * _kernel_width(orig_rate, new_rate) + orig_rate)


def _windowed_sinc(t: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """torchaudio's sinc_interp_hann taps (float32) at the float64 offsets `t` of inputs from their output, in
    seconds at the gcd-reduced rates; low-passed below the smaller Nyquist frequency."""
    base_rate = min(orig_rate, new_rate) * ROLLOFF
    t = (t * base_rate).clamp(-LOWPASS_FILTER_WIDTH, LOWPASS_FILTER_WIDTH)
    window = torch.cos(t * math.pi / LOWPASS_FILTER_WIDTH / 2) ** 2
    t = t * math.pi
    kernel = torch.where(t == 0, torch.tensor(1.0, dtype=torch.float64), t.sin() / t)
    return (kernel * window * (base_rate / orig_rate)).to(torch.float32)


@functools.lru_cache(maxsize=16)
def _sinc_kernel(orig_rate: int, new_rate: int) -> tuple[torch.Tensor, int]:
    """torchaudio's sinc_interp_hann kernel for gcd-reduced rates: (new_rate, 1, 2*width + orig_rate).

    Row `phase` holds the taps for outputs `phase, phase + new_rate, ...`; built in float64, then cast to float32.
    Like torchaudio, the output phases -j/new_rate are computed in float32 before joining the float64 grid.
    """
    width = _kernel_width(orig_rate, new_rate)
    input_offsets = (
        torch.arange(-width, width + orig_rate, dtype=torch.float64)[None, None]
        / orig_rate
    )
    output_phases = (
        torch.arange(0, -new_rate, -1, dtype=torch.float32)[:, None, None] / new_rate
    )
    t = output_phases + input_offsets  # (new_rate, 1, 2*width + orig_rate), float64
    return _windowed_sinc(t, orig_rate, new_rate), width


def resample(wav: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Windowed-sinc resampling of (..., samples), equal to torchaudio.functional.resample's defaults.

    torchaudio's polyphase kernel has new x (orig + 2 width) taps for the gcd-reduced rates: fine for every common
    rate (44.1 kHz -> 16 kHz: 76 000), 706 M taps for 44101 Hz. Rate pairs above MAX_KERNEL_TAPS evaluate the same
    formula per output sample instead, so memory and time follow the audio's length whatever the rates.
    """
    if orig_rate == new_rate:
        return wav
    gcd = math.gcd(orig_rate, new_rate)
    orig_rate, new_rate = orig_rate // gcd, new_rate // gcd
    if _kernel_taps(orig_rate, new_rate) > MAX_KERNEL_TAPS:
        return _resample_per_output(wav, orig_rate, new_rate)
    kernel, width = _sinc_kernel(orig_rate, new_rate)
    batch_shape, length = wav.shape[:-1], wav.shape[-1]
    # (B, 1, N + pads)
    padded = torch.nn.functional.pad(
        wav.reshape(-1, 1, length), (width, width + orig_rate)
    )
    # (B, new_rate, blocks)
    out = torch.nn.functional.conv1d(padded, kernel.to(wav), stride=orig_rate)
    # interleave the phases: (B, blocks * new_rate)
    out = out.transpose(1, 2).reshape(len(padded), -1)
    target_length = math.ceil(new_rate * length / orig_rate)
    return out[:, :target_length].reshape(*batch_shape, -1)


@functools.lru_cache(maxsize=4)
def _phase_taps(orig_rate: int, new_rate: int) -> tuple[torch.Tensor, int]:
    """The same windowed sinc for gcd-reduced rates, only its 2 width + 1 non-zero taps per output phase:
    (new_rate, 2 width + 1) float32, tap k of phase j weighing input j * orig // new - width + k of its block.
    The offsets i/orig - j/new are exact integers over orig * new (torchaudio rounds j/new to float32)."""
    width = _kernel_width(orig_rate, new_rate)
    phases = torch.arange(new_rate)[:, None]  # (new, 1)
    # (new, 2 width + 1)
    inputs = phases * orig_rate // new_rate + torch.arange(-width, width + 1)
    t = (inputs * new_rate - phases * orig_rate).double() / (orig_rate * new_rate)
    return _windowed_sinc(t, orig_rate, new_rate), width


def _resample_per_output(
    wav: torch.Tensor, orig_rate: int, new_rate: int, chunk: int = 16384
) -> torch.Tensor:
    """resample for gcd-reduced rates with a huge polyphase kernel: each output gathers its 2 width + 1 inputs and
    its phase's taps, `chunk` outputs at a time; memory new x (2 width + 1) taps plus one chunk."""
    kernel, width = _phase_taps(orig_rate, new_rate)
    batch_shape, length = wav.shape[:-1], wav.shape[-1]
    # (B, N + 2 width + 1)
    padded = torch.nn.functional.pad(wav.reshape(-1, length), (width, width + 1))
    taps = torch.arange(2 * width + 1)
    kernel = kernel.to(wav)
    target_length = math.ceil(new_rate * length / orig_rate)
    out = []
    for start in range(0, target_length, chunk):
        outputs = torch.arange(start, min(start + chunk, target_length))  # (C,)
        # (C, 2 width + 1) in padded coordinates
        inputs = (outputs * orig_rate // new_rate)[:, None] + taps
        out.append((padded[:, inputs] * kernel[outputs % new_rate]).sum(-1))  # (B, C)
    return torch.cat(out, dim=1).reshape(*batch_shape, -1)


def _hz_to_slaney_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's scale (librosa, htk=False): 200/3 Hz per mel below 1 kHz, logarithmic above."""
    linear = hz / (200.0 / 3)
    log_step = math.log(6.4) / 27.0
    return np.where(
        hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / log_step, linear
    )


def _slaney_mel_to_hz(mel: np.ndarray) -> np.ndarray:
    log_step = math.log(6.4) / 27.0
    return np.where(
        mel >= 15.0, 1000.0 * np.exp(log_step * (mel - 15.0)), mel * (200.0 / 3)
    )


@functools.lru_cache(maxsize=4)
def mel_filters(
    n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE
) -> torch.Tensor:
    """(n_mels, n_fft//2 + 1) triangles on the Slaney mel scale, area-normalised: librosa.filters.mel's defaults.

    Like librosa, the triangles are rounded to float32 before the float64 area norm, and the product again.
    """
    fft_hz = np.linspace(0, sample_rate / 2, 1 + n_fft // 2)
    edges_mel = np.linspace(
        _hz_to_slaney_mel(np.array(0.0)),
        _hz_to_slaney_mel(np.array(sample_rate / 2)),
        n_mels + 2,
    )
    # (n_mels + 2,) left edge, centre, right edge of each triangle
    edges_hz = _slaney_mel_to_hz(edges_mel)
    spacing = np.diff(edges_hz)
    ramps = edges_hz[:, None] - fft_hz[None, :]
    rising = -ramps[:-2] / spacing[:-1, None]
    falling = ramps[2:] / spacing[1:, None]
    triangles = np.maximum(0, np.minimum(rising, falling)).astype(np.float32)
    area_norm = 2.0 / (edges_hz[2:] - edges_hz[:-2])
    return torch.from_numpy((triangles * area_norm[:, None]).astype(np.float32))


def log_mel(wav: torch.Tensor, source: str = "<waveform>") -> torch.Tensor:
    """(samples,) 16 kHz waveform -> (samples // 160, 80) OSUM log-mel features, on the waveform's device.
    Features that are not finite (samples the checks of load_audio never saw) are an AudioError naming `source`."""
    if wav.ndim != 1 or len(wav) < MIN_SAMPLES:
        raise ValueError(
            f"log_mel wants a 1-D waveform of at least {MIN_SAMPLES} samples, got shape {tuple(wav.shape)}"
        )
    window = torch.hann_window(N_FFT, device=wav.device, dtype=wav.dtype)
    spectrum = torch.stft(
        wav,
        N_FFT,
        HOP,
        window=window,
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )
    # (201, frames): the last frame is dropped, as in the original
    power = spectrum[:, :-1].abs() ** 2
    mel = mel_filters().to(device=wav.device, dtype=wav.dtype) @ power  # (80, frames)
    log_spec = mel.clamp(min=1e-10).log10()
    if not torch.isfinite(log_spec).all():
        raise AudioError(
            source,
            "its log-mel features are not finite (samples far beyond full scale?)",
        )
    # per-utterance dynamic range of 80 dB
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).T  # (frames, 80)


def pad_features(feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """[(T_i, 80)] -> (B, T_max, 80) zero-padded and (B,) int32 lengths.

    Order is kept (the dataset sorts longest first)."""
    lengths = torch.tensor([len(f) for f in feats], dtype=torch.int32)
    return torch.nn.utils.rnn.pad_sequence(
        feats, batch_first=True, padding_value=0.0
    ), lengths
