"""int8 weight-only (osum_min/model/quantize.py) against float32 on the CPU: greedy decode speed and weight bytes.

A Qwen2-0.5B-sized LLM with random weights (qwen2-0.5b preset), laid out as OSUM.from_pretrained does, greedy at
batch 1 after a `--prefix`-position embedding prompt. Decode tokens/s excludes the prefill: the time of a 1-token
run is subtracted from an N-token one. Then one decode-step matmul (1 row) through the model's largest MLP layer and
its lm_head: Int8Linear (dequantised in blocks) against torch's `_weight_int8pack_mm` and float32, the figures
quantize.py's choice of CPU path rests on.

    python bench/quantize.py                   # ~1-2 minutes on 2 idle cores
"""

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from osum_min.model import quantize  # noqa: E402
from osum_min.model.generate import GenerationConfig, generate  # noqa: E402
from osum_min.model.linear import use_input_major_weights  # noqa: E402
from osum_min.model.qwen2 import LLM_PRESETS, Qwen2  # noqa: E402


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter and buffer, a tied tensor once."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def decode_seconds(model, embeds, new_tokens: int) -> float:
    """Seconds for new_tokens - 1 greedy decode steps: an N-token run minus a 1-token run (the prefill)."""

    def timed(n):
        start = time.perf_counter()
        generate(model, embeds, None, GenerationConfig(max_new_tokens=n, eos_token_id=None))
        return time.perf_counter() - start

    return timed(new_tokens) - timed(1)


def matmul_ms(layer, x, repeats: int = 20) -> float:
    """Best milliseconds of layer(x) over repeats."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        layer(x)
        times.append(time.perf_counter() - start)
    return 1e3 * min(times[1:])


def one_row_matmuls(float_model, quantized) -> dict:
    """ms per 1-row matmul: float32 (oneDNN), Int8Linear, and `_weight_int8pack_mm` on the same int8 weight."""
    figures = {}
    for name in ("layers.0.mlp.gate_proj", "lm_head"):
        layer = quantized.get_submodule(name)
        x = torch.randn(1, layer.in_features)
        label = name.split(".")[-1]
        figures[f"{label}_fp32_ms"] = round(matmul_ms(float_model.get_submodule(name), x), 3)
        figures[f"{label}_int8_ms"] = round(matmul_ms(layer, x), 3)
        if hasattr(torch, "_weight_int8pack_mm"):
            pack = lambda x, layer=layer: torch._weight_int8pack_mm(
                x, layer.weight_int8, layer.scale
            )  # noqa: E731
            figures[f"{label}_int8pack_ms"] = round(matmul_ms(pack, x), 3)
    return figures


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(LLM_PRESETS), default="qwen2-0.5b")
    parser.add_argument("--prefix", type=int, default=16, help="prompt embedding positions")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument(
        "--repeats", type=int, default=2, help="timed runs of each; the best is kept"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's default)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = use_input_major_weights(Qwen2(LLM_PRESETS[args.preset]).eval())
    embeds = torch.randn(1, args.prefix, model.config.dim)
    figures = {
        "preset": args.preset,
        "threads": torch.get_num_threads(),
        "new_tokens": args.new_tokens,
    }
    with torch.inference_mode():
        figures.update(
            fp32_weight_bytes=model_bytes(model),
            fp32_linear_bytes=quantize.linear_weight_bytes(model),
        )
        quantized = quantize.quantize_int8(copy.deepcopy(model))
        figures.update(
            int8_weight_bytes=model_bytes(quantized),
            int8_linear_bytes=quantize.linear_weight_bytes(quantized),
        )
        runs = {"fp32": model, "int8": quantized}
        best = {}
        for repeat in range(
            args.repeats + 1
        ):  # interleaved, best kept: other load on the machine is noise
            for name, net in runs.items():
                seconds = decode_seconds(
                    net, embeds, args.new_tokens if repeat else 2
                )  # repeat 0: warm-up
                if repeat:
                    best[name] = min(best.get(name, float("inf")), seconds)
                    print(
                        f"repeat {repeat} {name}: {(args.new_tokens - 1) / seconds:.2f} tok/s",
                        flush=True,
                    )
        figures.update(one_row_matmuls(model, quantized))
    figures.update(
        {
            f"{name}_tok_s": round((args.new_tokens - 1) / seconds, 2)
            for name, seconds in best.items()
        }
    )
    figures["int8_over_fp32_speed"] = round(figures["int8_tok_s"] / figures["fp32_tok_s"], 3)
    figures["int8_over_fp32_bytes"] = round(
        figures["int8_weight_bytes"] / figures["fp32_weight_bytes"], 3
    )
    figures["int8_over_fp32_linear_bytes"] = round(
        figures["int8_linear_bytes"] / figures["fp32_linear_bytes"], 3
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
