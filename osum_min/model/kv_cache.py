"""The decoder's static KV cache: storage only, preallocated once per decoding call, written in place.

Beam search and multiple samples continue `copies` rows from each prompt. Copying an item's prompt keys and values
to each of its rows would make every decode step read the prompt `copies` times over and every beam reorder move
it; so the cache keeps each item's prompt once (`prompt_k`, slots [0, P)) and gives each row slots of its own for
the new tokens (`k`, new token t at own slot t). Each layer has buffers of its own, so that a compiled step writes
them in place (a view of one buffer for all layers would make torch.compile copy the whole of it back every step).
The attention that reads the cache is in qwen2.py.

Sizes are rounded up to `SLOT_BUCKET` slots, so calls with similar lengths share a shape: a compiled decode step
(generate.py) is captured once per shape, and keeps its cache between calls.
"""

from dataclasses import dataclass

import torch

SLOT_BUCKET = 64


def bucket(slots: int) -> int:
    return -(-slots // SLOT_BUCKET) * SLOT_BUCKET


@dataclass
class KVCache:
    prompt_k: list[torch.Tensor]  # per layer (items, kv_heads, P, head_dim)
    prompt_v: list[torch.Tensor]
    # per layer (items * copies, kv_heads, S, head_dim): each row's own slots for new tokens
    k: list[torch.Tensor]
    v: list[torch.Tensor]

    @classmethod
    def empty(
        cls,
        layers: int,
        items: int,
        copies: int,
        kv_heads: int,
        prompt_slots: int,
        new_slots: int,
        head_dim: int,
        device,
        dtype,
    ) -> "KVCache":
        def zeros(rows, slots):
            return [
                torch.zeros(rows, kv_heads, slots, head_dim, device=device, dtype=dtype)
                for _ in range(layers)
            ]

        return cls(
            zeros(items, prompt_slots),
            zeros(items, prompt_slots),
            zeros(items * copies, new_slots),
            zeros(items * copies, new_slots),
        )

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(items, rows, prompt slots P, own slots S): what a compiled step is specialised to."""
        return (
            self.prompt_k[0].shape[0],
            self.k[0].shape[0],
            self.prompt_k[0].shape[2],
            self.k[0].shape[2],
        )

    def write_prompt(self, layer: int, item: int, slots, k, v):
        """Write one item's prompt k, v (1, kv_heads, L, hd) at `slots` (L,); return its whole prompt
        (1, kv_heads, P, hd), keys and values."""
        prompt_k, prompt_v = (
            self.prompt_k[layer][item : item + 1],
            self.prompt_v[layer][item : item + 1],
        )
        prompt_k.index_copy_(2, slots, k)
        prompt_v.index_copy_(2, slots, v)
        return prompt_k, prompt_v

    def write_new(self, layer: int, slot, k, v):
        """Write each row's new k, v (rows, kv_heads, 1, hd) at own slot `slot` (1,); return the layer's prompts
        (items, kv_heads, P, hd) and own slots (rows, kv_heads, S, hd), keys and values."""
        self.k[layer].index_copy_(2, slot, k)
        self.v[layer].index_copy_(2, slot, v)
        return self.prompt_k[layer], self.prompt_v[layer], self.k[layer], self.v[layer]

    def reorder(self, rows, written: int):
        """Row b becomes row rows[b] (beam reordering) for the own slots below `written`. Prompts stay put: the beams
        of an item only ever trade among themselves. On the CPU, where a host sync is free, only the rows that move
        are copied; elsewhere one gather per buffer copies every row, with no sync."""
        slots = slice(0, written)
        if rows.device.type == "cpu":
            moved = (rows != torch.arange(rows.numel())).nonzero()[:, 0]
            rows, targets = rows[moved], moved
        else:
            targets = slice(None)
        for buffer in self.k + self.v:
            buffer[targets, :, slots] = buffer[rows, :, slots]
