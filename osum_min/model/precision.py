"""The precision a model is loaded in: the best that fits the memory there is, chosen before loading.

Candidates from best to smallest: float32 (CPU only), bf16, int8 LLM linears with float32 around them, int8
with bf16 around them. The first whose bytes, plus a reserve for activations, KV cache and the process itself,
fit in the available memory wins, said in one line (unless it is the first and small); --dtype / --quantize
narrow the candidates. Where none fits, loading is refused in one line before a byte is read (a 24 GB machine
would otherwise be killed by the kernel).
"""

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

GIB = 2**30
RESERVE_FRACTION = 0.1  # of the model's bytes
RESERVE_BYTES = GIB // 2
SAID_FROM_BYTES = GIB  # smaller models (fixtures) load at their best without a word
DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bf16", torch.float16: "fp16"}


class PrecisionError(ValueError):
    """No candidate precision fits: one line with the bytes needed and available."""


@dataclass(frozen=True)
class Precision:
    dtype: torch.dtype
    quantize: str | None
    needed: int  # bytes of the loaded weights
    available: int  # bytes of memory available on the device

    @property
    def name(self) -> str:
        float_name = DTYPE_NAMES[self.dtype]
        return float_name if self.quantize is None else f"{self.quantize}+{float_name}"


def gib(nbytes: int) -> str:
    return f"{nbytes / GIB:.1f} GiB"


def weight_bytes(
    model: torch.nn.Module, dtype: torch.dtype, quantize: str | None
) -> int:
    """Bytes of `model` (built on the meta device, LoRA included) loaded in this precision.

    int8: one byte per LLM linear weight plus a scale per row; LoRA adapters are merged and go."""
    from .qwen2 import LoRALinear
    from .quantize import llm_linears

    quantized = {name for _, _, name in llm_linears(model)} if quantize else set()
    total, seen = 0, set()
    for name, module in model.named_modules():
        tensors = [
            *module.named_parameters(recurse=False),
            *module.named_buffers(recurse=False),
        ]
        for key, tensor in tensors:
            if name in quantized and key == "weight":
                total += tensor.numel() + tensor.shape[0] * dtype.itemsize
            elif name in quantized and isinstance(module, LoRALinear) and "lora" in key:
                continue  # merged into the int8 weight
            elif id(tensor) not in seen:  # a tied tensor counts once
                size = (
                    dtype.itemsize
                    if tensor.is_floating_point()
                    else tensor.element_size()
                )
                total += tensor.numel() * size
            seen.add(id(tensor))
    return total


def available_bytes(device: torch.device) -> int:
    """Free memory of a CUDA device; on the CPU /proc/meminfo's MemAvailable, less under a cgroup limit."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    fields = dict(
        line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines()
    )
    available = int(fields["MemAvailable"].split()[0]) * 1024
    limit, usage = (
        Path("/sys/fs/cgroup/memory.max"),
        Path("/sys/fs/cgroup/memory.current"),
    )
    if limit.is_file() and usage.is_file() and limit.read_text().strip() != "max":
        available = min(available, int(limit.read_text()) - int(usage.read_text()))
    return available


def fits(needed: int, available: int) -> bool:
    return needed * (1 + RESERVE_FRACTION) + RESERVE_BYTES <= available


def choose_precision(
    model: torch.nn.Module,
    device,
    dtype: torch.dtype | None = None,
    quantize: str | None = None,
    available: int | None = None,
    say=None,
) -> Precision:
    """The best candidate for `model` (on the meta device) that fits, said in one line through `say`;
    PrecisionError when none does. dtype / quantize: the user's overrides."""
    device = torch.device(device)
    available = available_bytes(device) if available is None else available
    floats = (
        [torch.bfloat16] if device.type == "cuda" else [torch.float32, torch.bfloat16]
    )
    # --dtype alone: not quantised
    quantizations = [quantize] if quantize or dtype else [None, "int8"]
    candidates = [
        (float_dtype, int8)
        for int8 in quantizations
        for float_dtype in ([dtype] if dtype else floats)
    ]
    options = [
        Precision(d, q, weight_bytes(model, d, q), available) for d, q in candidates
    ]
    chosen = next((p for p in options if fits(p.needed, available)), None)
    room = f"{gib(available)} available on {device.type}"
    if chosen is None:
        smallest = min(options, key=lambda p: p.needed)
        reserve = smallest.needed * RESERVE_FRACTION + RESERVE_BYTES
        raise PrecisionError(
            f"the model needs {gib(smallest.needed)} in {smallest.name} (+{gib(reserve)} to run), "
            f"{room}: not loading it"
        )
    if chosen is options[0] and chosen.needed < SAID_FROM_BYTES:
        return chosen
    why = "as asked" if dtype or quantize else "the best that fits"
    (say or _to_stderr)(
        f"precision: {chosen.name} ({why}: {gib(chosen.needed)} of weights, {room})"
    )
    return chosen


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
