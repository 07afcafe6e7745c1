"""Low-bit linears on the CPU, side by side at the released 7B's shapes: what quantize.py's Int8Linear runs.

For each shape (the MLP's 18944x3584 and 3584x18944, attention's 3584x3584, a k/v projection's 512x3584, the
lm_head's 152064x3584) and row count (1: greedy decoding; 4: beam 4; 256: a prefill), the milliseconds of one
matmul through each candidate, the effective GB/s of weight bytes read (the weight's bytes / time), the relative
error of the product (|y - x W^T| / |x W^T|, against float32), and that against the machine's read bandwidth
measured in the same run (a multi-threaded sum over 1 GiB). Decoding reads
every weight once per step, so at 1 and 4 rows the best candidate is the one nearest the read roofline.

Candidates: float32 through oneDNN (linear.py), bf16 `F.linear` (oneDNN's bf16 path with AVX512-BF16),
`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu` (group 128), `torch._int_mm` with per-token int8
activations (what torchao's int8 dynamic-activation configs run), int8 dequantisation under torch.compile
(--compile: minutes of compiling), torch's dynamic int8 linear with fbgemm's and oneDNN's engines (int8
activations, VNNI), and osum_min's Int8Linear (fbgemm, one activation scale per row).

    python bench/cpu_linears.py                          # ~5 minutes on 2 cores, ~5 GB at the lm_head
    python bench/cpu_linears.py --shapes attn --rows 1   # one cell, seconds
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from decode import measure_bandwidth  # noqa: E402
from osum_min.model.linear import linear  # noqa: E402
from osum_min.model.quantize import Int8Linear  # noqa: E402
from osum_min.progress import Progress  # noqa: E402

SHAPES = {  # name: (out, in) of the released OSUM's Qwen2-7B
    "mlp_up": (18944, 3584),
    "mlp_down": (3584, 18944),
    "attn": (3584, 3584),
    "kv": (512, 3584),
    "lm_head": (152064, 3584),
}
SLOW_SECONDS = 1.0  # a candidate slower than this at fewer rows is not run at more


def _seconds(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def timed_ms(call, budget: float = 1.0, most: int = 20) -> float:
    """Median milliseconds of call() after one warm-up, repeated until `budget` seconds or `most` times."""
    first = _seconds(call)
    times = []
    while (
        len(times) < most
        and (len(times) < 3 or sum(times) < budget)
        and first < SLOW_SECONDS
    ):
        times.append(_seconds(call))
    times = sorted(times or [first])
    return 1e3 * times[len(times) // 2]


def _dynamic(weight, scale, engine):
    zeros = torch.zeros(scale.shape, dtype=torch.long)
    quantized = torch.quantize_per_channel(
        weight, scale.double(), zeros, 0, torch.qint8
    )
    torch.backends.quantized.engine = engine
    packed = torch.ops.quantized.linear_prepack(quantized, None)
    return lambda x: torch.ops.quantized.linear_dynamic(x, packed, False)


def candidates(weight: torch.Tensor, compile: bool):
    """name -> (bytes of weight read per call, function of x float32 (rows, in))."""
    out, inner = weight.shape
    scale = weight.abs().amax(1) / 127  # (out,)
    int8 = (weight / scale[:, None]).round().clamp(-127, 127).to(torch.int8)
    # the input-major layout use_input_major_weights gives oneDNN
    oned = weight.t().contiguous().t()
    bf16 = weight.bfloat16()
    made = {
        "float32_onednn": (out * inner * 4, lambda x: linear(x, oned)),
        "bf16": (out * inner * 2, lambda x: F.linear(x.bfloat16(), bf16)),
        "int8pack_mm": (
            out * inner,
            lambda x: torch._weight_int8pack_mm(x, int8, scale),
        ),
        "dynamic_int8_fbgemm": (out * inner, _dynamic(weight, scale, "fbgemm")),
        "dynamic_int8_onednn": (out * inner, _dynamic(weight, scale, "onednn")),
    }

    # per-token int8 activations into torch._int_mm: torchao's int8 dynamic path
    def int_mm(
        x,
    ):
        step = x.abs().amax(1, keepdim=True) / 127  # (rows, 1)
        return torch._int_mm((x / step).round().to(torch.int8), int8.t()) * step * scale

    made["int_mm_per_token"] = (out * inner, int_mm)
    layer = Int8Linear.from_weight(weight)
    made["ours_int8"] = (out * inner, layer)
    if hasattr(torch.ops.aten, "_convert_weight_to_int4pack_for_cpu"):
        groups = 128
        grouped = weight.reshape(out, inner // groups, groups)
        low, high = grouped.amin(-1), grouped.amax(-1)
        step = ((high - low) / 15).clamp_min(1e-8)
        int4 = ((grouped - low[..., None]) / step[..., None]).round().clamp(0, 15)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            int4.reshape(out, inner).to(torch.int32), 1
        )
        zeros = low + 8 * step  # the kernel computes (q - 8) * scale + zero
        # (G, out, 2)
        scales_zeros = torch.stack([step, zeros], -1).transpose(0, 1).contiguous()
        made["int4pack_mm_g128"] = (
            out * inner // 2,
            lambda x: torch._weight_int4pack_mm_for_cpu(
                x, packed, groups, scales_zeros
            ),
        )
    if compile:
        dequant = torch.compile(
            lambda x: F.linear(x, int8.float()) * scale, dynamic=False
        )
        made["compiled_int8_dequant"] = (out * inner, dequant)
    return made


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES)
    )
    parser.add_argument("--rows", nargs="+", type=int, default=[1, 4, 256])
    parser.add_argument(
        "--compile", action="store_true", help="also torch.compile'd dequant"
    )
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    bandwidth = measure_bandwidth("cpu")["read"]
    print(
        f"read bandwidth: {bandwidth / 1e9:.1f} GB/s ({torch.get_num_threads()} threads)"
    )
    table = {}
    with torch.inference_mode(), Progress(len(args.shapes), "shapes") as bar:
        for shape_name in args.shapes:
            out, inner = SHAPES[shape_name]
            weight = torch.randn(out, inner) * inner**-0.5  # (out, in)
            made = candidates(weight, args.compile)
            slow = set()
            for rows in sorted(args.rows):
                x = torch.randn(rows, inner)
                reference = x @ weight.T  # (rows, out)
                for name, (nbytes, call) in made.items():
                    key = f"{shape_name}_rows{rows}_{name}"
                    if name in slow:
                        table[key] = None  # slower than SLOW_SECONDS at fewer rows
                        continue
                    ms = timed_ms(lambda: call(x))
                    error = (call(x).float() - reference).norm() / reference.norm()
                    slow |= {name} if ms > 1e3 * SLOW_SECONDS else set()
                    gbs = nbytes / ms / 1e6
                    table[key] = {
                        "ms": round(ms, 3),
                        "weight_gb_per_s": round(gbs, 2),
                        "of_read_roofline": round(gbs / (bandwidth / 1e9), 3),
                        "relative_error": round(error.item(), 5),
                    }
                    print(
                        f"{shape_name:8} {rows:4} rows {name:22} {ms:9.2f} ms {gbs:6.1f} GB/s "
                        f"error {error:.4f}"
                    )
            del made, weight
            bar.update()
    result = {
        "bench": "cpu_linears",
        "threads": torch.get_num_threads(),
        "read_gb_per_s": round(bandwidth / 1e9, 2),
        **table,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
