"""The decoder's static KV cache, one per attention layer: preallocated, written in place at explicit slots.

Slots are sequence positions; row b holds one sequence. Beam search and multiple samples continue `copies` rows
from each prompt. Copying the prompt's keys and values to every row would make each decode step read the prompt
`copies` times over and make every beam reorder move it; `share_prompt` instead keeps them once per item and gives
each row only slots of its own for the new tokens. Slot numbers stay global: slot P + t is a row's own slot t.
"""
from dataclasses import dataclass

import torch


@dataclass
class KVCache:
    k: torch.Tensor  # (rows, n_kv_heads, slots, head_dim): each row's own slots
    v: torch.Tensor
    prompt_k: torch.Tensor | None = None  # (items, n_kv_heads, P, head_dim): slots [0, P), shared by `copies` rows
    prompt_v: torch.Tensor | None = None

    @classmethod
    def empty(cls, rows: int, n_kv_heads: int, slots: int, head_dim: int, device, dtype) -> "KVCache":
        k = torch.zeros(rows, n_kv_heads, slots, head_dim, device=device, dtype=dtype)
        return cls(k, torch.zeros_like(k))

    @property
    def prompt_len(self) -> int:
        return 0 if self.prompt_k is None else self.prompt_k.shape[2]

    @property
    def num_slots(self) -> int:
        return self.prompt_len + self.k.shape[2]

    def rows(self, rows: slice) -> "KVCache":
        """A view of some rows (before sharing): writes through it land in this cache."""
        return KVCache(self.k[rows], self.v[rows])

    def update(self, cache_pos, k, v, num_slots: int):
        """Write k, v (rows, n_kv_heads, L, hd) at slots `cache_pos` (L,); return the rows' own keys and values of
        the first `num_slots` slots, (rows, n_kv_heads, num_slots - P, hd)."""
        own = cache_pos - self.prompt_len
        self.k.index_copy_(2, own, k)
        self.v.index_copy_(2, own, v)
        return self.k[:, :, :num_slots - self.prompt_len], self.v[:, :, :num_slots - self.prompt_len]

    def share_prompt(self, copies: int, new_slots: int):
        """What the cache holds becomes the prompt of `copies` consecutive rows per item, each with `new_slots`
        empty slots of its own after it."""
        self.prompt_k, self.prompt_v = self.k, self.v
        items, n_kv_heads, _, head_dim = self.k.shape
        self.k = self.k.new_zeros(items * copies, n_kv_heads, new_slots, head_dim)
        self.v = torch.zeros_like(self.k)

    def reorder(self, index, length: int):
        """Row b becomes row index[b] (beam reordering), in place, copying only the rows that move and only their
        own slots below `length`. Shared prompts stay put: the beams of an item only ever trade among themselves."""
        moved = (index != torch.arange(index.numel(), device=index.device)).nonzero()[:, 0]
        sources, slots = index[moved], slice(0, length - self.prompt_len)
        self.k[moved, :, slots] = self.k[sources, :, slots]
        self.v[moved, :, slots] = self.v[sources, :, slots]

    def attend_with_prompt(self, q, k, v, mask):
        """One decode step's attention over the shared prompt and each row's own slots, softmax taken jointly.

        q (R, H, 1, hd); k, v (R, Hkv, T, hd) from `update`; mask (R, 1, 1, P + T) boolean -> (R, Hkv, H/Hkv, hd).
        The prompt part is one matmul per item whose rows are all its beams' query heads.
        """
        items, n_kv_heads, P, head_dim = self.prompt_k.shape
        R, H = q.shape[:2]
        copies, group = R // items, H // n_kv_heads

        def per_item(x):  # (R, Hkv, G, X) -> (items, Hkv, copies * G, X)
            return x.reshape(items, copies, n_kv_heads, group, -1).transpose(1, 2).reshape(items, n_kv_heads, -1,
                                                                                              x.shape[-1])

        def per_row(x):  # the inverse
            return x.reshape(items, n_kv_heads, copies, group, -1).transpose(1, 2).reshape(R, n_kv_heads, group,
                                                                                              x.shape[-1])

        q = q.reshape(R, n_kv_heads, group, head_dim) * head_dim ** -0.5
        prompt_scores = per_row(per_item(q) @ self.prompt_k.transpose(2, 3))  # (R, Hkv, G, P)
        scores = torch.cat([prompt_scores, q @ k.transpose(2, 3)], dim=-1)  # (R, Hkv, G, P + T)
        weights = scores.masked_fill(~mask, float("-inf")).softmax(-1, dtype=torch.float32).to(q.dtype)
        return per_row(per_item(weights[..., :P]) @ self.prompt_v) + weights[..., P:] @ v
