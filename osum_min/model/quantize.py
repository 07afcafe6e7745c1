"""int8 inference: every LLM linear stored as int8 with one float scale per output channel.

Symmetric per-output-channel quantisation: scale = max|row| / 127, weight_int8 = round(row / scale): a quarter
of float32's bytes, half of bf16's. How the matmul runs:

- CPU: fbgemm's dynamic int8 linear (torch.ops.quantized). The weight is packed once for fbgemm; each call
  quantises the activations to 8 bits, one scale per row (per token), and multiplies int8 x int8 with VNNI.
  Decoding is bound by weight reads, and this streams the int8 weight faster than any other kernel torch
  has here streams int8 or bf16: docs/performance.md has the side-by-side figures (bench/cpu_linears.py)
  that picked it over `_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`, compiled dequantisation,
  oneDNN's engine and bf16, and its fidelity. Each row's result depends on that row alone, so a batch
  decodes as each item alone. torch has deprecated quantized tensors; their ops are still in 2.13.
- CUDA, and anything under torch.compile: `F.linear(x, weight_int8.to(x.dtype)) * scale`, the form gpt-fast's
  WeightOnlyInt8Linear uses, which inductor fuses into one kernel that streams the int8 weight.
"""

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .qwen2 import LoRALinear, Qwen2

FBGEMM = "fbgemm" in torch.backends.quantized.supported_engines


def _has_vnni() -> bool:
    """Whether the CPU multiplies u8 x s8 with VNNI; without it fbgemm sums pairs in int16, which
    saturates unless activations keep to 7 bits (reduce_range)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


REDUCE_RANGE = not _has_vnni()
QUANTIZE_ROWS = 8192  # output channels quantised at a time (the 7B's lm_head: 152064)


def _pack(weight_int8, scale):
    """fbgemm's packed form of (out, in) int8 rows with float scales; the int8 tensor can go."""
    zeros = torch.zeros(scale.shape, dtype=torch.long)
    # quantized tensors are deprecated: their ops are all we use
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        quantized = torch._make_per_channel_quantized_tensor(
            weight_int8, scale.double(), zeros, 0
        )
    engine = torch.backends.quantized.engine
    torch.backends.quantized.engine = "fbgemm"  # prepack packs for the engine set now
    try:
        return torch.ops.quantized.linear_prepack(quantized, None)
    finally:
        torch.backends.quantized.engine = engine


class Int8Linear(nn.Module):
    """y = (x @ weight_int8.T) * scale + bias, for inference (no gradients)."""

    def __init__(
        self,
        weight_int8: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor | None,
    ):
        super().__init__()
        self.out_features, self.in_features = weight_int8.shape
        self.register_buffer("scale", scale)  # (out,) float
        self.register_buffer("bias", bias)  # (out,) or None
        self.packed = None  # fbgemm's weight on the CPU
        if weight_int8.device.type == "cpu" and FBGEMM:
            self.packed = _pack(weight_int8, scale)
            weight_int8 = None
        self.register_buffer("weight_int8", weight_int8)  # (out, in) int8

    @classmethod
    @torch.no_grad()
    def from_weight(cls, weight, bias=None, device=None, lora=None) -> "Int8Linear":
        """Quantise a float (out, in) weight, QUANTIZE_ROWS rows at a time in float32; lora: (A (r, in),
        B (out, r), scaling) merged into each block first. device: where it lands (default: the weight's)."""
        device = torch.device(device) if device is not None else weight.device
        weight_int8 = torch.empty(weight.shape, dtype=torch.int8, device=device)
        scale = torch.empty(weight.shape[0], dtype=weight.dtype, device=device)
        for start in range(0, weight.shape[0], QUANTIZE_ROWS):
            block = slice(start, start + QUANTIZE_ROWS)
            # (n, in), ours to change
            rows = weight[block].to(device, torch.float32, copy=True)
            if lora is not None:
                lora_a, lora_b, scaling = lora
                rows.addmm_(lora_b[block].to(rows), lora_a.to(rows), alpha=scaling)
            low, high = torch.aminmax(rows, dim=1)
            # the scale rounded to its stored dtype first, so the int8 values fit the scale used
            row_scale = (torch.maximum(-low, high) / 127).to(weight.dtype)
            scale[block] = row_scale
            tiny = torch.finfo(torch.float32).tiny  # an all-zero row stays 0
            rows.div_(row_scale.float().clamp_min(tiny)[:, None])
            weight_int8[block] = rows.round_().clamp_(-127, 127)
        bias = None if bias is None else bias.detach().to(device)
        return cls(weight_int8, scale, bias)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, layer: nn.Linear, device=None, tensors=None) -> "Int8Linear":
        """Quantise `layer`'s weight, LoRA merged (unless it already is). tensors: its parameters by name
        (default: the layer's own; a layer on the meta device takes them from the weight files)."""
        tensors = tensors or dict(layer.named_parameters())
        lora = None
        if isinstance(layer, LoRALinear) and not layer.merged:
            lora = (tensors["lora_A"], tensors["lora_B"], layer.scaling)
        return cls.from_weight(tensors["weight"], tensors.get("bias"), device, lora)

    def int8_weight(self) -> torch.Tensor:
        """The (out, in) int8 values, unpacked on the CPU."""
        if self.packed is None:
            return self.weight_int8
        return torch.ops.quantized.linear_unpack(self.packed)[0].int_repr()

    def dequantized_weight(self) -> torch.Tensor:
        """The float (out, in) weight this layer computes with."""
        return self.int8_weight().to(self.scale.dtype) * self.scale[:, None]

    def forward(self, x):
        if self.packed is not None and not torch.compiler.is_compiling():
            flat = x.reshape(-1, self.in_features).float()  # (N, in)
            tiny = torch.finfo(torch.float32).tiny
            row_scale = flat.abs().amax(-1, keepdim=True).clamp_min(tiny)  # (N, 1)
            # fbgemm picks one 8-bit grid from the call's min and max: a last row holding -1 and +1 fixes
            # it to [-1, 1], where every scaled row lies, so each row is quantised as it would be alone
            span = flat.new_zeros(1, self.in_features)
            span[0, :2] = torch.tensor([-1.0, 1.0])
            rows = torch.cat([flat / row_scale, span])  # (N + 1, in)
            out = torch.ops.quantized.linear_dynamic(rows, self.packed, REDUCE_RANGE)[
                :-1
            ]
            out = out * row_scale  # (N, out) float32
            if self.bias is not None:
                out = out + self.bias.float()
            return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        weight = self.int8_weight()
        out = F.linear(x, weight.to(x.dtype))  # (..., out): what inductor fuses
        out = out * self.scale.to(x.dtype)
        return out if self.bias is None else out + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        )


def llm_linears(module: nn.Module):
    """(parent, attribute, qualified name) of every linear of every Qwen2 inside `module`."""
    for prefix, llm in module.named_modules():
        if isinstance(llm, Qwen2):
            for name, parent in llm.named_modules():
                for attribute, child in parent.named_children():
                    if isinstance(child, nn.Linear):
                        qualified = ".".join(p for p in (prefix, name, attribute) if p)
                        yield parent, attribute, qualified


def quantize_int8(module: nn.Module, device=None, read=None) -> nn.Module:
    """Replace every linear of every Qwen2 inside `module` (the projections and lm_head) by an Int8Linear.

    LoRA is merged into each weight before it is quantised. device: where the int8 weights land. read: a
    function name -> tensor (weights.load_weights' reader of the safetensors files) for a module built on
    the meta device: each linear is then read, merged and quantised alone, so only one float weight is ever
    held. The encoder and adaptor stay float.
    """
    for parent, attribute, name in list(llm_linears(module)):
        layer, tensors = getattr(parent, attribute), None
        if read is not None:
            tensors = {
                key: read(f"{name}.{key}") for key, _ in layer.named_parameters()
            }
        setattr(parent, attribute, Int8Linear.from_linear(layer, device, tensors))
    return module


def linear_weight_bytes(module: nn.Module) -> int:
    """Bytes held by the linears (float or int8) inside `module`: weights, scales and biases."""
    total = 0
    for layer in module.modules():
        if isinstance(layer, Int8Linear) and layer.packed is not None:
            total += layer.in_features * layer.out_features  # fbgemm's packed int8
        if isinstance(layer, (nn.Linear, Int8Linear)):
            tensors = [*layer.parameters(recurse=False), *layer.buffers(recurse=False)]
            total += sum(t.numel() * t.element_size() for t in tensors if t is not None)
    return total
