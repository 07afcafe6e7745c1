"""The Whisper encoder as OSUM runs it (wenet's TransformerEncoder with a conv1d2 front).

Mathematically this is openai-whisper's AudioEncoder, so we use whisper's parameter names: a Whisper checkpoint
loads with `WHISPER_KEYS` and the OSUM checkpoint through convert.py's table. Two things differ from Whisper:
OSUM never pads the mel to 30 s, and it masks padded frames in a batch, with the original's quirky mask rule
(docs/original.md §9.1) available for reproducing its training loss.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config_check import check_config, check_divides
from .linear import Linear


@dataclass
class EncoderConfig:
    n_mels: int = 80
    dim: int = 1024
    heads: int = 16
    ff_dim: int = 4096
    layers: int = 24
    # frames after the stride-2 front: 30 s of 10 ms mel frames
    max_positions: int = 1500

    def __post_init__(self):
        check_config(self)
        check_divides(self, "heads", "dim")

    @staticmethod
    def output_length(mel_frames):
        """Encoder frames from `mel_frames` (an int or a tensor) of one item alone: ceil(T / 2),
        from conv2's stride 2."""
        return (mel_frames + 1) // 2

    @classmethod
    def from_whisper_dims(cls, dims: dict) -> "EncoderConfig":
        """openai-whisper's checkpoint `dims` (n_mels, n_audio_state/head/layer); the MLP is 4x wide."""
        width = dims["n_audio_state"]
        return cls(
            n_mels=dims["n_mels"],
            dim=width,
            heads=dims["n_audio_head"],
            ff_dim=4 * width,
            layers=dims["n_audio_layer"],
        )


ENCODER_PRESETS = {
    "whisper-medium": EncoderConfig(),  # OSUM's encoder
    "whisper-small": EncoderConfig(dim=768, heads=12, ff_dim=3072, layers=12),
    "whisper-base": EncoderConfig(dim=512, heads=8, ff_dim=2048, layers=6),
    "whisper-tiny": EncoderConfig(dim=384, heads=6, ff_dim=1536, layers=4),
}


def whisper_state_dict(whisper_state: dict) -> dict:
    """Our encoder's weights from an openai-whisper `model_state_dict`.

    The key table is the identity under "encoder." (conv1, conv2, positional_embedding, blocks.N.attn.{query,key,
    value,out}, blocks.N.attn_ln, blocks.N.mlp.{0,2}, blocks.N.mlp_ln, ln_post); the decoder's keys are not ours.
    """
    return {
        key[len("encoder.") :]: value
        for key, value in whisper_state.items()
        if key.startswith("encoder.")
    }


class EncoderInputError(ValueError):
    """Input the encoder cannot take (longer than its positional table)."""


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 so the model runs in bf16 without losing the statistics."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(
            x.float(),
            self.normalized_shape,
            self.weight.float(),
            self.bias.float(),
            self.eps,
        ).type_as(x)


class MultiHeadAttention(nn.Module):
    def __init__(self, dim: int, heads: int, key_bias: bool):
        super().__init__()
        self.heads = heads
        self.query = Linear(dim, dim)
        self.key = Linear(dim, dim, bias=key_bias)
        self.value = Linear(dim, dim)
        self.out = Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        batch, time, dim = x.shape
        q, k, v = (
            proj(x).view(batch, time, self.heads, -1).transpose(1, 2)  # (B, H, T, d)
            for proj in (self.query, self.key, self.value)
        )
        # (B, 1, 1, T) True = attend
        mask = None if key_mask is None else key_mask[:, None, None, :]
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(x.transpose(1, 2).reshape(batch, time, dim))


class ResidualAttentionBlock(nn.Module):
    """Pre-norm block: x + Attn(LN(x)), then x + FF(LN(x)). Shared by the encoder and the adaptor."""

    def __init__(
        self,
        dim: int,
        heads: int,
        ff_dim: int,
        activation: type[nn.Module] = nn.GELU,
        key_bias: bool = False,
    ):
        super().__init__()
        self.attn = MultiHeadAttention(dim, heads, key_bias)
        self.attn_ln = LayerNorm(dim)
        self.mlp = nn.Sequential(Linear(dim, ff_dim), activation(), Linear(ff_dim, dim))
        self.mlp_ln = LayerNorm(dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.attn_ln(x), key_mask)
        return x + self.mlp(self.mlp_ln(x))


def whisper_sinusoids(length: int, dim: int) -> torch.Tensor:
    """Whisper's table: sin and cos halves concatenated (not interleaved), timescales up to 10000."""
    inv_timescales = torch.exp(
        -math.log(10000) / (dim // 2 - 1) * torch.arange(dim // 2, dtype=torch.float32)
    )
    angles = (
        torch.arange(length, dtype=torch.float32)[:, None] * inv_timescales[None, :]
    )
    return torch.cat([angles.sin(), angles.cos()], dim=1)  # (length, dim)


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    # (B, T) True = valid
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def key_padding_mask(lengths: torch.Tensor, time: int) -> torch.Tensor | None:
    """(B, time) True = attend, for the encoder's and the adaptor's attention; None when no item is padded, so
    attention runs without a mask."""
    return None if bool((lengths >= time).all()) else lengths_to_mask(lengths, time)


class WhisperEncoder(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.conv1 = nn.Conv1d(config.n_mels, config.dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(
            config.dim, config.dim, kernel_size=3, stride=2, padding=1
        )
        self.register_buffer(
            "positional_embedding", whisper_sinusoids(config.max_positions, config.dim)
        )
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(config.dim, config.heads, config.ff_dim)
            for _ in range(config.layers)
        )
        self.ln_post = LayerNorm(config.dim)

    def forward(
        self, mel: torch.Tensor, mel_lens: torch.Tensor, original_mask_rule: bool = True
    ):
        """mel (B, T, n_mels) zero-padded -> (B, ceil(T/2), dim) and valid lengths (B,).

        original_mask_rule: wenet cuts the frame mask as mask[(T+1) % 2 :: 2] with T the *padded* length, so an
        odd-length item in an even-length batch loses its last frame (docs/original.md §9.1). Keep it to reproduce the
        original's batched numbers; turn it off to make every item independent of its batch.
        """
        padded_len = mel.shape[1]
        if (padded_len + 1) // 2 > self.config.max_positions:
            raise EncoderInputError(
                f"encoder input of {padded_len} mel frames is longer than the model's "
                f"{2 * self.config.max_positions} (30 s); split long audio into windows"
            )
        x = F.gelu(self.conv1(mel.transpose(1, 2)))  # (B, dim, T)
        if not original_mask_rule:
            # conv1 turns zero padding into gelu(bias), which conv2 would mix into an odd item's last frame
            x = x * lengths_to_mask(mel_lens, padded_len)[:, None, :].to(x.dtype)
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # (B, ceil(T/2), dim)
        x = x + self.positional_embedding[: x.shape[1]].to(x.dtype)
        lengths = self.config.output_length(mel_lens.to(torch.long))  # (B,)
        if original_mask_rule and padded_len % 2 == 0:
            lengths = mel_lens.to(torch.long) // 2  # an odd item loses its last frame
        key_mask = key_padding_mask(lengths, x.shape[1])
        for block in self.blocks:
            x = block(x, key_mask)
        return self.ln_post(x), lengths
