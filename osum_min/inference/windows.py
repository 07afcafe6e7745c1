"""Long audio: cut waveforms into windows the model can take (at most 30 s), at quiet points, and join them.

OSUM's encoder has a 30 s positional table and the original silently truncates longer input. We cut instead, each
cut at the quietest stretch (lowest short-time energy) of the few seconds before the 30 s limit, so a cut rarely
falls inside a word. The windows tile the audio exactly: nothing dropped, nothing decoded twice. The windows of
many waveforms are decoded together in batches of similar length by pipeline.py.
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from osum_min.audio import HOP, SAMPLE_RATE
from osum_min.text.tasks import parse_windows


def frame_energy(wav: torch.Tensor, smooth_frames: int = 10) -> torch.Tensor:
    """(samples,) -> (samples // HOP,) mean power per 10 ms frame, averaged over `smooth_frames` frames around it
    (100 ms), so the minimum is a pause rather than one quiet sample between syllables."""
    frames = wav[: len(wav) // HOP * HOP].float().reshape(-1, HOP)  # (F, HOP)
    power = frames.pow(2).mean(dim=1)  # (F,)
    kernel = torch.ones(1, 1, smooth_frames) / smooth_frames
    padded = F.pad(
        power[None, None],
        (smooth_frames // 2, (smooth_frames - 1) // 2),
        mode="replicate",
    )
    return F.conv1d(padded, kernel)[0, 0]  # (F,)


def split_windows(
    wav: torch.Tensor,
    max_seconds: float = 30.0,
    search_seconds: float = 5.0,
    min_last_seconds: float = 1.0,
    sample_rate: int = SAMPLE_RATE,
) -> list[tuple[int, int]]:
    """[(start_sample, end_sample)] covering `wav` exactly once, each at most `max_seconds` long.

    Each cut lies in the `search_seconds` before the limit and leaves the last window at least `min_last_seconds`
    (a sliver of audio decodes to nothing useful). Audio within the limit is one window.
    """
    total = len(wav)
    max_samples = int(max_seconds * sample_rate)
    if total <= max_samples:
        return [(0, total)]
    energy = frame_energy(wav)
    search_frames = int(search_seconds * sample_rate) // HOP
    min_last = int(min_last_seconds * sample_rate)
    windows, start = [], 0
    while total - start > max_samples:
        # cut at a frame start <= the limit
        last_frame = min(start + max_samples, total - min_last) // HOP
        first_frame = max(last_frame - search_frames, start // HOP + 1)
        quietest = first_frame + int(torch.argmin(energy[first_frame : last_frame + 1]))
        cut = quietest * HOP
        windows.append((start, cut))
        start = cut
    windows.append((start, total))
    return windows


@dataclass
class Decoded:
    """One waveform through the model: its windows, the new token ids and score of each, and its share of
    decoding time."""

    windows: list[tuple[int, int]]  # sample ranges covering the audio
    ids: list[list[int]] = field(default_factory=list)
    # generate's return_scores per window (NaN: the model failed)
    scores: list[float] = field(default_factory=list)
    # when asked (Request.logprobs): per window, per new token, OSUM.token_logprobs' entry
    logprobs: list[list[tuple]] = field(default_factory=list)
    decode_seconds: float = 0.0
    # the LLM positions its windows' speech took (bos and eos included)
    speech_positions: int = 0

    @property
    def audio_seconds(self) -> float:
        return self.windows[-1][1] / SAMPLE_RATE

    def parse(self, task, tokenizer):
        """The windows' texts parsed for the task and joined (times shifted by each window's start); None without a
        tokenizer."""
        if tokenizer is None:
            return None
        return parse_windows(
            task,
            tokenizer,
            self.ids,
            [start / SAMPLE_RATE for start, _ in self.windows],
        )
