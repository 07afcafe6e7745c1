"""OSUM's adaptor ("link"): encoder frames (50/s) -> speech embeddings (12.5/s) in the LLM's width.

Three causal stride-(1, 2, 2) convolutions (GxlConv1dSubsampling4), a 4-block transformer (wenet defaults:
ReLU, key bias, x·√d plus interleaved sinusoids) and a linear projection to the LLM width (docs/original.md §3).
The strides are config (`AdaptorConfig.strides`), and the config says what length they give (`output_length`):
the model, the prompt-length check and the server's usage counts ask it.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config_check import check_config, check_divides
from .encoder import LayerNorm, ResidualAttentionBlock, key_padding_mask
from .linear import Linear


@dataclass
class AdaptorConfig:
    dim: int = 1024  # encoder width in and transformer width
    heads: int = 4
    ff_dim: int = 2560
    layers: int = 4
    llm_dim: int = 3584
    max_positions: int = 5000
    strides: tuple[int, ...] = (1, 2, 2)  # one causal k=3 convolution each
    # speech embeddings x this: 1 in OSUM; osum-mini trains at its LLM's token-embedding
    # scale with the projection's weights at their own (examples/mini/align.py)
    output_scale: float = 1.0

    def __post_init__(self):
        check_config(self)
        check_divides(self, "heads", "dim")

    def output_length(self, frames):
        """Speech embeddings from `frames` encoder frames (an int, or a tensor of
        lengths): ceil(frames / stride) after each convolution."""
        for stride in self.strides:
            frames = (frames + stride - 1) // stride
        return frames


class CausalConvSubsampling(nn.Module):
    """Left-padded k=3 convolutions (GELU after each) with the given strides, (1, 2, 2) in OSUM:
    each output sees only current and past frames, so right padding never leaks into valid ones."""

    def __init__(self, dim: int, strides: tuple[int, ...]):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv1d(dim, dim, 3, stride=stride) for stride in strides
        )

    def forward(self, x: torch.Tensor):
        x = x.transpose(1, 2)  # (B, D, T)
        for conv in self.convs:
            x = F.gelu(conv(F.pad(x, (2, 0))))  # (B, D, ceil(T / stride))
        return x.transpose(1, 2)  # (B, T', D)


def interleaved_sinusoids(length: int, dim: int) -> torch.Tensor:
    """The classic transformer table: sin at even channels, cos at odd channels."""
    div = torch.exp(
        torch.arange(0, dim, 2, dtype=torch.float32) * -(math.log(10000.0) / dim)
    )
    angles = torch.arange(length, dtype=torch.float32)[:, None] * div[None, :]
    table = torch.zeros(length, dim)
    table[:, 0::2], table[:, 1::2] = angles.sin(), angles.cos()
    return table  # (length, dim)


class Adaptor(nn.Module):
    def __init__(self, config: AdaptorConfig):
        super().__init__()
        self.config = config
        self.downsample = CausalConvSubsampling(config.dim, config.strides)
        self.input_proj = Linear(config.dim, config.dim)
        self.input_ln = LayerNorm(config.dim)
        self.register_buffer(
            "positional_embedding",
            interleaved_sinusoids(config.max_positions, config.dim),
        )
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(
                config.dim,
                config.heads,
                config.ff_dim,
                activation=nn.ReLU,
                key_bias=True,
            )
            for _ in range(config.layers)
        )
        self.ln_post = LayerNorm(config.dim)
        self.proj = Linear(config.dim, config.llm_dim)

    def transform(self, x: torch.Tensor, lengths: torch.Tensor):
        """Encoder output (B, T, dim) -> the 4-block transformer's output (B, T', dim) and lengths (B,)."""
        x = self.downsample(x)  # (B, T', dim)
        lengths = self.config.output_length(lengths)
        x = self.input_ln(self.input_proj(x)) * math.sqrt(self.config.dim)
        x = x + self.positional_embedding[: x.shape[1]].to(x.dtype)
        key_mask = key_padding_mask(lengths, x.shape[1])
        for block in self.blocks:
            x = block(x, key_mask)
        return self.ln_post(x), lengths

    def forward(self, x: torch.Tensor, lengths: torch.Tensor):
        """Encoder output (B, T, dim) -> speech embeddings (B, T', llm_dim) and their lengths (B,)."""
        x, lengths = self.transform(x, lengths)
        return self.proj(x) * self.config.output_scale, lengths
