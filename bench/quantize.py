"""int8 weight-only (osum_min/quantize.py) against float32 on the CPU: greedy decode speed and weight bytes.

A Qwen2-0.5B-sized LLM with random weights (qwen2-0.5b preset), laid out as OSUM.from_pretrained does, greedy at
batch 1 after a `--prefix`-position embedding prompt. Decode tokens/s excludes the prefill: the time of a 1-token
run is subtracted from an N-token one. int8 decodes through `_weight_int8pack_mm`; `int8_dequant` forces the
other CPU path (dequantise each weight to float32, then oneDNN) at every row count, to show which is faster here.

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
from osum_min import quantize  # noqa: E402
from osum_min.generate import GenerationConfig, generate  # noqa: E402
from osum_min.linear import use_input_major_weights  # noqa: E402
from osum_min.qwen2 import PRESETS, Qwen2  # noqa: E402


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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="qwen2-0.5b")
    parser.add_argument("--prefix", type=int, default=16, help="prompt embedding positions")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each; the best is kept")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = use_input_major_weights(Qwen2(PRESETS[args.preset]).eval())
    embeds = torch.randn(1, args.prefix, model.config.hidden_size)
    figures = {"preset": args.preset, "threads": torch.get_num_threads(), "new_tokens": args.new_tokens}
    with torch.inference_mode():
        figures.update(fp32_weight_bytes=model_bytes(model), fp32_linear_bytes=quantize.linear_weight_bytes(model))
        quantized = quantize.quantize_int8(copy.deepcopy(model))
        figures.update(int8_weight_bytes=model_bytes(quantized),
                       int8_linear_bytes=quantize.linear_weight_bytes(quantized))
        pack_max_rows = quantize.PACK_MAX_ROWS
        runs = {"fp32": (model, pack_max_rows), "int8": (quantized, pack_max_rows),
                "int8_dequant": (quantized, 0)}  # 0: every row count through the dequantised path
        best = {}
        for repeat in range(args.repeats + 1):  # interleaved, best kept: other load on the machine is noise
            for name, (net, rows) in runs.items():
                quantize.PACK_MAX_ROWS = rows
                seconds = decode_seconds(net, embeds, args.new_tokens if repeat else 2)  # repeat 0: warm-up
                if repeat:
                    best[name] = min(best.get(name, float("inf")), seconds)
                    print(f"repeat {repeat} {name}: {(args.new_tokens - 1) / seconds:.2f} tok/s", flush=True)
    figures.update({f"{name}_tok_s": round((args.new_tokens - 1) / seconds, 2) for name, seconds in best.items()})
    figures["int8_over_fp32_speed"] = round(figures["int8_tok_s"] / figures["fp32_tok_s"], 3)
    figures["int8_dequant_over_fp32_speed"] = round(figures["int8_dequant_tok_s"] / figures["fp32_tok_s"], 3)
    figures["int8_over_fp32_bytes"] = round(figures["int8_weight_bytes"] / figures["fp32_weight_bytes"], 3)
    figures["int8_over_fp32_linear_bytes"] = round(figures["int8_linear_bytes"] / figures["fp32_linear_bytes"], 3)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
