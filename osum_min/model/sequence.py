"""The LLM input sequence: one padding rule for training and decoding.

An item is its segments end to end, with no gap (`OSUM._item` sets their
order: prompt, speech bos, speech, speech eos, and in training the label).
A batch left-pads each whole item to the longest: `left_padded`.

Why that reproduces the original (docs/original.md §7, §9.2), whose
training rows pad inside (after the prompt, after the speech):
- position ids are cumsum(mask) - 1 on real slots (`position_ids`), so a
  real slot gets its position alone, the one the original gives it (its
  padding is masked, so its cumsum skips it);
- the mask shows each real slot exactly the real slots before it;
- so each real slot's output, each label's logit and the loss are the
  item's alone, and the slot before a label is the item's own (the speech
  eos), never padding. Padding inside the row kept that only while the
  speech eos came last before the label: moving the prompt after the
  speech broke batching silently.
"""

from typing import NamedTuple

import torch

IGNORE_ID = -100  # a slot with no target: all but the label's (§9.7)


class Sequences(NamedTuple):
    """A batch laid out for the LLM: items right-aligned."""

    inputs_embeds: torch.Tensor  # (B, L, H) zeros before each item
    attention_mask: torch.Tensor  # (B, L) 1 on an item's slots
    position_ids: torch.Tensor  # (B, L)
    targets: torch.Tensor  # (B, L) a label slot's id, else IGNORE_ID


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """0/1 mask (B, L) -> (B, L): the count of real slots before each
    real slot; 1 on padding, as the original sets it (never read)."""
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)


def left_padded(items: list[tuple[torch.Tensor, torch.Tensor]]) -> Sequences:
    """B items of (embeddings (N_i, H), targets (N_i,)) -> Sequences,
    each item at the end of its row, zero embeddings before it."""
    embeds, _ = items[0]
    length = max(item.shape[0] for item, _ in items)
    batch = len(items)
    inputs_embeds = embeds.new_zeros(batch, length, embeds.shape[1])
    mask = torch.zeros(batch, length, dtype=torch.long, device=embeds.device)
    targets = torch.full_like(mask, IGNORE_ID)
    for row, (item, item_targets) in enumerate(items):
        start = length - item.shape[0]
        inputs_embeds[row, start:] = item
        mask[row, start:] = 1
        targets[row, start:] = item_targets
    return Sequences(inputs_embeds, mask, position_ids(mask), targets)
