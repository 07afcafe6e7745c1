"""osum_min.audio against the original's numbers (fixture_a), openai-whisper's filter bank, a brute-force resampler,
and a corpus of good and bad files generated here."""

import importlib.util
import io
import math
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from safetensors.torch import load_file

from osum_min.audio import (
    AudioError,
    load_audio,
    log_mel,
    mel_filters,
    pad_features,
    resample,
)

FIXTURE = Path(__file__).parent / "fixtures" / "fixture_a"
ASSETS = Path(__file__).parent / ".assets"


@pytest.fixture(scope="module")
def expected():
    return load_file(FIXTURE / "expected.safetensors")


def max_abs(a, b) -> float:
    return (
        (
            torch.as_tensor(a, dtype=torch.float64)
            - torch.as_tensor(b, dtype=torch.float64)
        )
        .abs()
        .max()
        .item()
    )


# ---------------------------------------------------------------- the original's numbers (fixture_a)


def test_load_16k_wav_is_int16_over_32768(expected):
    assert torch.equal(load_audio(FIXTURE / "audio.wav"), expected["waveform_16k"])


def test_resample_44k_stereo_equals_torchaudio(expected):
    wav = load_audio(FIXTURE / "audio_44k.wav")
    assert (
        wav.dtype == torch.float32
        and wav.shape == expected["waveform_from_44k_resampled"].shape
    )
    # observed: 0.0 (bitwise)
    assert max_abs(wav, expected["waveform_from_44k_resampled"]) <= 1e-5


def test_log_mel_equals_fixture(expected):
    feats = log_mel(expected["waveform_16k"])
    assert feats.shape == (276, 80) and feats.dtype == torch.float32
    assert max_abs(feats, expected["feats"]) <= 1e-4  # observed: 2.6e-5
    assert (
        max_abs(log_mel(load_audio(FIXTURE / "audio.wav")), expected["feats"]) <= 1e-4
    )
    # 2.3e-5
    assert (
        max_abs(
            log_mel(load_audio(FIXTURE / "audio_44k.wav")), expected["feats_from_44k"]
        )
        <= 1e-4
    )


def test_pad_features_rebuilds_the_training_batch(expected):
    feats = [
        log_mel(load_audio(FIXTURE / name))
        for name in ("audio.wav", "audio_batch_item1.wav")
    ]
    mel, lengths = pad_features(feats)
    assert lengths.dtype == torch.int32 and lengths.tolist() == expected[
        "batch_feats_lengths"
    ].tolist() == [276, 219]
    assert mel.shape == expected["batch_feats"].shape
    assert max_abs(mel, expected["batch_feats"]) <= 1e-4
    assert torch.all(mel[1, 219:] == 0)


def test_log_mel_frame_count_and_dtype():
    for n in (400, 401, 16000, 16159, 16160):
        assert log_mel(torch.randn(n) * 0.1).shape == (n // 160, 80)
    wav = torch.randn(8000) * 0.1
    assert max_abs(log_mel(wav.double()), log_mel(wav)) <= 1e-4
    with pytest.raises(ValueError):
        log_mel(torch.zeros(100))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_log_mel_follows_device(expected):
    feats = log_mel(expected["waveform_16k"].cuda())
    assert feats.device.type == "cuda"
    assert max_abs(feats.cpu(), expected["feats"]) <= 1e-4


# ---------------------------------------------------------------- the filter bank against openai-whisper's copy


def test_mel_filters_equal_whisper_npz():
    spec = importlib.util.find_spec("whisper")
    if spec is None:
        pytest.skip("openai-whisper is not installed")
    npz = (
        Path(next(iter(spec.submodule_search_locations))) / "assets" / "mel_filters.npz"
    )
    reference = np.load(npz)["mel_80"]
    ours = mel_filters()
    assert ours.shape == reference.shape == (80, 201) and ours.dtype == torch.float32
    assert max_abs(ours, reference) <= 1e-6  # observed: 0.0 (bitwise)


# ---------------------------------------------------------------- the resampler against the formula itself


def brute_force_resample(
    x: np.ndarray,
    orig_rate: int,
    new_rate: int,
    outputs: list[int],
    phase_dtype=np.float64,
):
    """y[m] = sum_i x[i] h(i/orig - m/new) with the Hann-windowed sinc h, evaluated directly in float64.

    m/new is split as block + phase/new; torchaudio (and so the original) rounds phase/new to float32.
    """
    g = math.gcd(orig_rate, new_rate)
    orig, new = orig_rate // g, new_rate // g
    base = min(orig, new) * 0.99
    i = np.arange(len(x))
    values = []
    for m in outputs:
        block, phase = divmod(m, new)
        offset = (i - block * orig) / orig - np.float64(
            phase_dtype(phase) / phase_dtype(new)
        )
        t = np.clip(offset * base, -6, 6)
        h = np.sinc(t) * np.cos(t * math.pi / 12) ** 2 * base / orig
        values.append(np.sum(x * h))
    return np.array(values)


@pytest.mark.parametrize(
    "orig_rate,new_rate",
    [(48000, 16000), (22050, 16000), (8000, 16000), (16000, 44100)],
)
def test_resample_matches_windowed_sinc_formula(orig_rate, new_rate):
    # full-scale white noise
    x = np.random.default_rng(0).uniform(-1, 1, 900).astype(np.float32)
    y = resample(torch.from_numpy(x), orig_rate, new_rate)
    assert len(y) == math.ceil(len(x) * new_rate / orig_rate)
    outputs = [0, 1, 2, 7, 101, len(y) // 2, len(y) - 2, len(y) - 1]
    torchaudio_phases = brute_force_resample(
        x.astype(np.float64), orig_rate, new_rate, outputs, np.float32
    )
    # float32 kernel and accumulation; observed <= 2.2e-7
    assert max_abs(y[outputs], torchaudio_phases) <= 5e-7
    exact = brute_force_resample(x.astype(np.float64), orig_rate, new_rate, outputs)
    # what the float32 phases cost: up to 1.6e-5 at 22.05 kHz
    assert max_abs(y[outputs], exact) <= 3e-5


def test_resample_identity_and_batch():
    x = torch.randn(3, 1000)
    assert resample(x, 16000, 16000) is x
    batched = resample(x, 44100, 16000)
    assert batched.shape == (3, math.ceil(1000 * 160 / 441))
    assert torch.allclose(batched[1], resample(x[1], 44100, 16000), atol=1e-6)


# ---------------------------------------------------------------- a corpus of good and bad files


def write_pcm_wav(path: Path, frames: np.ndarray, rate: int, width: int) -> None:
    """Raw integer PCM through the stdlib writer, so the test, not libsndfile, decides the stored integers."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(width)
        out.setframerate(rate)
        if width == 3:
            data = b"".join(
                int(v).to_bytes(4, "little", signed=True)[:3] for v in frames
            )
        else:
            data = frames.astype({1: "<u1", 2: "<i2", 4: "<i4"}[width]).tobytes()
        out.writeframes(data)


@pytest.mark.parametrize(
    "width,stored,expected_value",
    [
        (1, np.array([0, 64, 128, 192, 255] * 100), lambda v: (v - 128) / 128),
        (2, np.array([-32768, -1, 0, 1, 32767] * 100), lambda v: v / 32768),
        (3, np.array([-(2**23), -1, 0, 1, 2**23 - 1] * 100), lambda v: v / 2**23),
        (4, np.array([-(2**31), -12345, 0, 1, 2**31 - 1] * 100), lambda v: v / 2**31),
    ],
)
def test_integer_wav_scaling_like_torchaudio(tmp_path, width, stored, expected_value):
    path = tmp_path / f"pcm{8 * width}.wav"
    write_pcm_wav(path, stored, 16000, width)
    wav = load_audio(path)
    assert wav.dtype == torch.float32
    assert torch.equal(
        wav,
        torch.from_numpy(expected_value(stored.astype(np.float64)).astype(np.float32)),
    )


def tone(rate: int, seconds: float = 0.5, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    mono = 0.5 * np.sin(2 * np.pi * 440 * t)
    # (frames, channels)
    return np.stack([mono * (c + 1) / channels for c in range(channels)], axis=1)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_other_rates_resample_to_16k(tmp_path, rate):
    path = tmp_path / f"tone_{rate}.wav"
    soundfile.write(path, tone(rate), rate, subtype="FLOAT")
    wav = load_audio(path)
    assert len(wav) == math.ceil(len(tone(rate)) * 16000 / rate)
    # a 440 Hz tone stays a 440 Hz tone away from the edges (the zero padding rings for ~6 input samples)
    middle = slice(200, len(wav) - 200)
    assert max_abs(wav[middle], tone(16000)[middle, 0]) <= 2e-3


def test_float_and_multichannel_wavs(tmp_path):
    six = tone(16000, channels=6)
    for subtype in ("FLOAT", "DOUBLE"):
        soundfile.write(tmp_path / "six.wav", six, 16000, subtype=subtype)
        wav = load_audio(tmp_path / "six.wav")
        assert wav.shape == (8000,)
        assert max_abs(wav, six.astype(np.float32).mean(axis=1)) <= 1e-7


@pytest.mark.parametrize(
    "fmt,subtype,atol",
    [
        ("FLAC", "PCM_16", 1 / 32768),
        ("OGG", "VORBIS", 0.05),
        ("MP3", "MPEG_LAYER_III", 0.1),
    ],
)
def test_compressed_formats(tmp_path, fmt, subtype, atol):
    if fmt not in soundfile.available_formats():
        pytest.skip(f"this libsndfile cannot read {fmt}")
    path = tmp_path / f"tone.{fmt.lower()}"
    soundfile.write(path, tone(16000), 16000, format=fmt, subtype=subtype)
    wav = load_audio(path)
    # mp3 may carry encoder delay/padding
    assert abs(len(wav) - 8000) <= (0 if fmt != "MP3" else 1152)
    if fmt != "MP3":
        assert max_abs(wav[100:-100], tone(16000)[100:-100, 0]) <= atol


def test_file_like_object():
    buffer = io.BytesIO((FIXTURE / "audio.wav").read_bytes())
    assert torch.equal(load_audio(buffer), load_audio(FIXTURE / "audio.wav"))
    with pytest.raises(AudioError, match="BytesIO"):
        load_audio(io.BytesIO(b"not audio at all"))


def test_a_span_reads_that_stretch_of_the_file(tmp_path):
    """A segment of a long recording (WenetSpeech's opus files) equals the same samples cut from the whole file,
    at the file's rate and at 16 kHz; an end past the audio is cut there; a span that is not one is refused."""
    whole = load_audio(FIXTURE / "audio.wav")
    assert torch.equal(
        load_audio(FIXTURE / "audio.wav", span=(0.25, 0.75)), whole[4000:12000]
    )
    assert torch.equal(load_audio(FIXTURE / "audio.wav", span=(0.5, 1e6)), whole[8000:])
    opus = tmp_path / "long.opus"
    soundfile.write(
        opus,
        np.sin(np.arange(48000 * 3) / 20).astype(np.float32),
        48000,
        format="OGG",
        subtype="OPUS",
    )
    assert len(load_audio(opus, span=(1.0, 2.5))) == 24000
    for span, problem in (
        ((0.5, 0.5), "not a span of time"),
        ((-1, 0.5), "not a span of time"),
        ((math.nan, 1), "not a span of time"),
        ((1e3, 1e3 + 1), "starts after the audio's end"),
    ):
        with pytest.raises(AudioError, match=problem) as caught:
            load_audio(FIXTURE / "audio.wav", span=span)
        assert "audio.wav" in str(caught.value) and "\n" not in str(caught.value)


def test_long_audio_is_loaded(tmp_path):
    soundfile.write(tmp_path / "long.wav", np.zeros(31 * 16000, np.int16), 16000)
    assert len(load_audio(tmp_path / "long.wav")) == 31 * 16000


def encoded(samples: np.ndarray, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, 16000, format=fmt, subtype=subtype)
    return buffer.getvalue()


def with_sample(value: float) -> np.ndarray:
    samples = tone(16000)
    samples[123] = value
    return samples


# name -> (file contents, the problem the error must name)
BAD_FILES = {
    "empty.wav": (lambda: b"", "not a readable audio file"),
    "no_samples.wav": (lambda: encoded(np.zeros(0)), "no audio samples"),
    "header_only.wav": (lambda: encoded(tone(16000))[:44], "truncated"),
    "truncated_header.wav": (
        lambda: encoded(tone(16000))[:30],
        "not a readable audio file",
    ),
    "truncated_data.wav": (lambda: encoded(tone(16000))[:8000], "truncated"),
    "truncated.flac": (
        lambda: encoded(tone(16000), "FLAC")[:3000],
        "not a readable audio file",
    ),
    "truncated.ogg": (
        lambda: encoded(tone(16000), "OGG", "VORBIS")[:2000],
        "not a readable audio file",
    ),
    "truncated.mp3": (
        lambda: encoded(tone(16000), "MP3", "MPEG_LAYER_III")[:1500],
        "truncated",
    ),
    "text.wav": (
        lambda: b"RIFF? no, just some text that someone named .wav\n" * 20,
        "not a readable audio file",
    ),
    "image.wav": (
        lambda: b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(200),
        "not a readable audio file",
    ),
    "nan.wav": (
        lambda: encoded(with_sample(float("nan")), subtype="FLOAT"),
        "NaN or infinite",
    ),
    "inf.wav": (
        lambda: encoded(with_sample(float("inf")), subtype="FLOAT"),
        "NaN or infinite",
    ),
    "too_short.wav": (lambda: encoded(tone(16000)[:200]), "too short"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_are_refused_in_one_line(tmp_path, name):
    if name.endswith(".mp3") and "MP3" not in soundfile.available_formats():
        pytest.skip("this libsndfile cannot read MP3")
    make_bytes, problem = BAD_FILES[name]
    path = tmp_path / name
    path.write_bytes(make_bytes())
    with pytest.raises(AudioError, match=problem) as err:
        load_audio(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert isinstance(err.value, ValueError)


def test_missing_file_and_directory(tmp_path):
    for path, problem in (
        (tmp_path / "missing.wav", "no such file"),
        (tmp_path, "is a directory"),
    ):
        with pytest.raises(AudioError, match=problem) as err:
            load_audio(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------- real recordings


def test_real_recording_arctic():
    path = ASSETS / "arctic_a0007.wav"
    if not path.exists():
        pytest.skip(
            "tests/.assets/arctic_a0007.wav not fetched (run python tests/assets.py)"
        )
    wav = load_audio(path)
    assert len(wav) == 64000  # 4.0 s at 16 kHz
    assert log_mel(wav).shape == (400, 80)


def test_real_recording_48k_alsa():
    path = Path("/usr/share/sounds/alsa/Front_Center.wav")
    if not path.exists():
        pytest.skip("alsa-utils sounds are not installed")
    frames = soundfile.info(path).frames
    assert soundfile.info(path).samplerate == 48000
    wav = load_audio(path)
    assert len(wav) == math.ceil(frames / 3)
    assert abs(len(wav) / 16000 - 1.428) < 1e-3
