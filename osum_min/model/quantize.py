"""int8 weight-only inference: every LLM linear stored as int8 with one float scale per output channel.

Symmetric per-output-channel quantisation: scale = max|row| / 127, weight_int8 = round(row / scale), so the
linear's memory drops to a quarter of float32 (half of bf16) plus one scale per row. Activations stay float;
the weight is dequantised inside the matmul:

- CUDA, and anything under torch.compile: `F.linear(x, weight_int8.to(x.dtype)) * scale`, the form gpt-fast's
  WeightOnlyInt8Linear uses, which inductor fuses into one kernel that streams the int8 weight.
- CPU eager: the same, a block of DEQUANT_BLOCK weights at a time (16 MB of float32), so only one block is ever
  float and the allocator reuses it. torch's `_weight_int8pack_mm` reads int8 directly but, measured here on one
  thread, runs a 4864x896 layer at 1 row in 3.5 ms against 0.8 ms dequantised (lm_head 151936x896: 111 vs 35 ms),
  and it goes row by row: 200 rows take 15x longer.

On CPU this is a memory option, not a speed one: float32 decoding through oneDNN (linear.py) is as fast or faster
(figures in README.md, from bench/quantize.py).
"""

import torch
import torch.nn.functional as F
from torch import nn

from .linear import linear
from .qwen2 import LoRALinear, Qwen2

DEQUANT_BLOCK = (
    2**22
)  # CPU: weights dequantised at a time (under glibc's 32 MB mmap threshold: memory is reused)
QUANTIZE_ROWS = (
    8192  # output channels quantised at a time, bounding the float copy (the 7B's lm_head: 152064)
)


class Int8Linear(nn.Module):
    """y = (x @ weight_int8.T) * scale + bias, for inference (no gradients)."""

    def __init__(self, weight_int8: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight_int8.shape
        self.register_buffer("weight_int8", weight_int8)  # (out, in) int8
        self.register_buffer("scale", scale)  # (out,), the float dtype the weight had
        self.register_buffer("bias", bias)  # (out,) or None

    @classmethod
    @torch.no_grad()
    def from_linear(cls, layer: nn.Linear, device=None) -> "Int8Linear":
        """Quantise `layer.weight` (merging LoRA first); device: where the int8 weight lands (default: the layer's)."""
        if isinstance(layer, LoRALinear):
            layer.merge()
        weight = layer.weight
        device = torch.device(device) if device is not None else weight.device
        weight_int8 = torch.empty(weight.shape, dtype=torch.int8, device=device)
        scale = torch.empty(weight.shape[0], dtype=weight.dtype, device=device)
        for start in range(0, weight.shape[0], QUANTIZE_ROWS):
            rows = weight[start : start + QUANTIZE_ROWS].to(device, torch.float32)  # (n, in)
            # round the scale to its stored dtype first, so the int8 values fit the scale actually used
            row_scale = (rows.abs().amax(dim=1) / 127).to(weight.dtype)
            scale[start : start + QUANTIZE_ROWS] = row_scale
            divisor = row_scale.float().clamp_min(torch.finfo(torch.float32).tiny)[
                :, None
            ]  # an all-zero row stays 0
            weight_int8[start : start + QUANTIZE_ROWS] = (rows / divisor).round().clamp(-127, 127)
        bias = None if layer.bias is None else layer.bias.detach().to(device)
        return cls(weight_int8, scale, bias)

    def dequantized_weight(self) -> torch.Tensor:
        """The float (out, in) weight this layer computes with."""
        return self.weight_int8.to(self.scale.dtype) * self.scale[:, None]

    def forward(self, x):
        if x.device.type == "cpu" and not torch.compiler.is_compiling():
            blocks = self.weight_int8.split(
                max(1, DEQUANT_BLOCK // self.in_features)
            )  # (rows, in) each
            out = torch.cat(
                [linear(x, block.to(x.dtype)) for block in blocks], dim=-1
            )  # oneDNN for float32
        else:
            out = F.linear(x, self.weight_int8.to(x.dtype))  # (..., out): what inductor fuses
        out = out * self.scale.to(x.dtype)
        return out if self.bias is None else out + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def quantize_int8(module: nn.Module, device=None) -> nn.Module:
    """Replace every linear of every Qwen2 inside `module` (the projections and lm_head) by an Int8Linear.

    LoRA is merged into each weight before it is quantised. device: where the int8 weights land (load on the CPU,
    quantise onto the GPU: only one float weight is ever on the GPU). The encoder and adaptor stay float.
    """
    for llm in [m for m in module.modules() if isinstance(m, Qwen2)]:
        for parent in list(llm.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, Int8Linear.from_linear(child, device))
    return module


def linear_weight_bytes(module: nn.Module) -> int:
    """Bytes held by the linears (float or int8) inside `module`: weights, scales and biases."""
    total = 0
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, Int8Linear)):
            tensors = [*layer.parameters(recurse=False), *layer.buffers(recurse=False)]
            total += sum(t.numel() * t.element_size() for t in tensors)
    return total
