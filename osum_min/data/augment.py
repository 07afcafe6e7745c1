"""OSUM's training augmentation on log-mel features: wenet's `spec_aug` and `spec_sub` (docs/original.md §10).

Both draw from a `random.Random` passed in, so a dataset worker's augmentation is a pure function of its seed.
Masked values are set to 0.0, the same value the batch padding uses; there is no time warping.
"""

import random

import torch


def spec_augment(
    feats: torch.Tensor,
    rng: random.Random,
    num_time_masks: int = 2,
    max_time_width: int = 50,
    num_freq_masks: int = 2,
    max_freq_width: int = 10,
) -> torch.Tensor:
    """(T, F) -> (T, F) with `num_time_masks` frame spans of width 1..max_time_width and `num_freq_masks` bin spans
    of width 1..max_freq_width zeroed (a span starting near the end is cut short by it, as in wenet)."""
    out = feats.clone()
    frames, bins = out.shape
    for _ in range(num_time_masks):
        start = rng.randint(0, frames - 1)
        out[start : start + rng.randint(1, max_time_width), :] = 0.0
    for _ in range(num_freq_masks):
        start = rng.randint(0, bins - 1)
        out[:, start : start + rng.randint(1, max_freq_width)] = 0.0
    return out


def spec_substitute(
    feats: torch.Tensor, rng: random.Random, num_subs: int = 3, max_width: int = 30
) -> torch.Tensor:
    """(T, F) -> (T, F) where `num_subs` spans of width 1..max_width are overwritten by an earlier span of the
    original features (wenet's spec_sub: the copy is taken `rng.randint(0, start)` frames back)."""
    out = feats.clone()
    frames = out.shape[0]
    for _ in range(num_subs):
        start = rng.randint(0, frames - 1)
        end = min(frames, start + rng.randint(1, max_width))
        back = rng.randint(0, start)
        out[start:end, :] = feats[start - back : end - back, :]
    return out
