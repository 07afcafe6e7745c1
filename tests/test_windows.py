"""Long-audio windows: the 53 s LibriVox Sonnet 1 reading is cut once, in a pause, and tiled exactly."""

from pathlib import Path

import pytest
import torch

from osum_min.audio import HOP, SAMPLE_RATE, load_audio, log_mel
from osum_min.inference.pipeline import decode_waveforms
from osum_min.inference.windows import frame_energy, split_windows
from osum_min.model.osum import OSUM_PRESETS

SONNET = Path(__file__).parent / ".assets" / "sonnet1.wav"


def assert_exact_cover(windows, total, max_samples):
    assert windows[0][0] == 0 and windows[-1][1] == total
    assert all(
        end == next_start for (_, end), (next_start, _) in zip(windows, windows[1:])
    )
    assert all(0 < end - start <= max_samples for start, end in windows)


def test_sonnet_is_cut_once_at_a_pause():
    if not SONNET.exists():
        pytest.skip("tests/.assets/sonnet1.wav missing (run python tests/assets.py)")
    wav = load_audio(SONNET)
    assert 53.0 < len(wav) / SAMPLE_RATE < 53.5
    windows = split_windows(wav)
    assert len(windows) == 2
    assert_exact_cover(windows, len(wav), 30 * SAMPLE_RATE)
    cut = windows[0][1]
    assert 25 * SAMPLE_RATE <= cut <= 30 * SAMPLE_RATE
    energy = frame_energy(wav)
    # The cut is in a pause: quieter than 95% of the recording's 100 ms stretches and under 5% of the median.
    assert (energy < energy[cut // HOP]).float().mean() < 0.05
    assert energy[cut // HOP] < 0.05 * energy.median()


def test_synthetic_cut_finds_the_silence():
    generator = torch.Generator().manual_seed(0)
    wav = 0.3 * torch.randn(70 * SAMPLE_RATE, generator=generator)
    silences = [
        (27 * SAMPLE_RATE, 27 * SAMPLE_RATE + 4000),
        (52 * SAMPLE_RATE, 52 * SAMPLE_RATE + 4000),
    ]
    for start, end in silences:
        wav[start:end] = 0
    windows = split_windows(wav)
    assert_exact_cover(windows, len(wav), 30 * SAMPLE_RATE)
    assert len(windows) == 3
    for (start, end), (_, cut) in zip(silences, windows):
        assert start <= cut <= end  # inside the 0.25 s of silence


def test_short_audio_is_one_window_and_no_sliver_at_the_end():
    assert split_windows(torch.zeros(30 * SAMPLE_RATE)) == [(0, 30 * SAMPLE_RATE)]
    wav = torch.ones(30 * SAMPLE_RATE + 10)
    wav[-100:] = 0  # the quietest point would leave a 10-sample last window
    windows = split_windows(wav)
    assert_exact_cover(windows, len(wav), 30 * SAMPLE_RATE)
    assert windows[-1][1] - windows[-1][0] >= SAMPLE_RATE


class LengthEcho:
    """A stand-in for OSUM: each window's 'tokens' are its mel length, and the batches are recorded."""

    config = OSUM_PRESETS["tiny"]  # 30 s windows; speech_positions for the usage counts

    def __init__(self):
        self.batches = []

    def generate(
        self, mel, mel_lens, prompt_ids, on_token=None, return_scores=False, **settings
    ):
        self.batches.append(mel_lens.tolist())
        ids = [[int(n)] for n in mel_lens]
        return (ids, [0.0] * len(ids)) if return_scores else ids


def test_windows_batch_longest_first_alone_in_time_order_and_come_back_to_their_waveform():
    generator = torch.Generator().manual_seed(0)
    # three windows, the last the shortest
    long_wav = 0.3 * torch.randn(70 * SAMPLE_RATE, generator=generator)
    long_wav[24 * SAMPLE_RATE : 24 * SAMPLE_RATE + 4000] = 0
    waves = [long_wav, 0.3 * torch.randn(12 * SAMPLE_RATE, generator=generator)]
    batched, alone = LengthEcho(), LengthEcho()
    by_batch = decode_waveforms(batched, waves, [[1], [1]], {}, batch_size=8)
    by_one = decode_waveforms(alone, waves, [[1], [1]], {}, batch_size=1)
    assert [len(d.windows) for d in by_batch] == [3, 1]
    # one batch, longest first
    assert batched.batches[0] == sorted(batched.batches[0], reverse=True)
    window_frames = [
        [log_mel(wav[s:e]).shape[0] for s, e in d.windows]
        for d, wav in zip(by_one, waves)
    ]
    # time order, for --stream
    assert alone.batches == [[n] for frames in window_frames for n in frames]
    for decoded in (by_batch, by_one):
        assert [[ids[0] for ids in d.ids] for d in decoded] == window_frames
        # OSUM's strides: ceil(T / 8) embeddings, bos and eos, per window
        assert [d.speech_positions for d in decoded] == [
            sum(-(-n // 8) + 2 for n in frames) for frames in window_frames
        ]
