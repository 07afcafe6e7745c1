"""Decode speed and memory: our Qwen2 + generate against transformers + peft on the same random weights.

A Qwen2-0.5B-sized model with OSUM's LoRA (r 8, alpha 32), float32 on CPU by default: greedy at batch 1 and beam 4,
`--new-tokens` tokens after a `--prefix`-position embedding prompt. Ours merges LoRA for inference; transformers +
peft keeps it unmerged, as OSUM runs it. The machine's memory bandwidth is measured in the same run, which bounds
decoding: steps/s <= bandwidth / bytes of weights read per step (the roofline). Two bandwidths, two rooflines:
- copy: bytes copied per second by a large fp32 copy, the issue's definition (its calibration, transformers + peft at
  ~80 % of an ~11 tok/s ceiling, is this one);
- read: bytes per second of a large fp32 sum, a read-only stream like decoding's, the tighter physical bound.

    python bench/decode.py                    # CPU fp32, 0.5B, both implementations
    python bench/decode.py --compile          # adds our torch.compile'd decode step
    python bench/decode.py --size 7b --device cuda --dtype bf16   # ours only, HBM roofline
"""

import argparse
import copy
import json
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path[:0] = [
    str(Path(__file__).resolve().parents[1]),
    str(Path(__file__).resolve().parents[1] / "tests"),
]
from osum_min.model.generate import GenerationConfig, fast_decoding, generate  # noqa: E402
from osum_min.progress import Progress  # noqa: E402
from osum_min.model.linear import use_input_major_weights  # noqa: E402
from osum_min.model.qwen2 import LLM_PRESETS, Qwen2  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SIZES = {"0.5b": "qwen2-0.5b", "7b": "qwen2-7b"}


def measure_bandwidth(device, gib: float = 1.0, repeats: int = 5) -> dict:
    """{"copy": bytes copied per second, "read": bytes summed per second} over a 1 GiB fp32 tensor, best of repeats."""
    src = torch.ones(int(gib * 2**30) // 4, device=device)
    dst = torch.empty_like(src)
    rates = {}
    for name, work in [("copy", lambda: dst.copy_(src)), ("read", lambda: src.sum())]:
        best = float("inf")
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            work()
            sync(device)
            best = min(best, time.perf_counter() - start)
        rates[name] = src.numel() * 4 / best
    return rates


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def weight_bytes_per_step(model: Qwen2) -> int:
    """Every parameter is read once per decode step, except the embedding table (one row) unless tied to lm_head."""
    params = {id(p): p for p in model.parameters()}
    if not model.config.tie_embeddings:
        params.pop(id(model.embed_tokens.weight))
    return sum(p.numel() * p.element_size() for p in params.values())


class PeakMemory:
    """Memory a block needs beyond what was held before it (KV cache, activations, temporaries): the CUDA
    allocator's peak, or on CPU the process RSS sampled every 2 ms (both models' weights are resident throughout)."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"

    def __enter__(self):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        import psutil

        self.process, self.running = psutil.Process(), True
        self.start = self.peak = self.process.memory_info().rss
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self.cuda:
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.running = False
            self.thread.join()
        self.extra = self.peak - self.start


def measure(run, new_tokens: int, final_norm, ceilings: dict, device) -> dict:
    """One timed run; the prefill ends when the final norm first returns (a hook), the rest is decoding."""
    marks = {}

    def end_of_prefill(*_):
        sync(device)
        marks["prefill"] = time.perf_counter()
        handle.remove()

    handle = final_norm.register_forward_hook(end_of_prefill)
    sync(device)
    start = time.perf_counter()
    with PeakMemory(device) as memory:
        run(new_tokens)
        sync(device)
    total_s = time.perf_counter() - start
    prefill_s = marks["prefill"] - start
    decode_tok_s = (new_tokens - 1) / (total_s - prefill_s)
    return {
        "prefill_s": round(prefill_s, 3),
        "decode_tok_s": round(decode_tok_s, 2),
        "e2e_tok_s": round(new_tokens / total_s, 2),
        **{
            f"{name}_roofline_fraction": round(decode_tok_s / ceiling, 3)
            for name, ceiling in ceilings.items()
        },
        "peak_extra_mem_mib": round(memory.extra / 2**20),
    }


def build_models(args, dtype):
    """(ours merged and laid out as OSUM.from_pretrained does, transformers + peft unmerged or None) with identical
    random weights."""
    cfg = replace(
        LLM_PRESETS[SIZES[args.size]], lora_rank=8, lora_alpha=32.0, lora_dropout=0.0
    )
    if args.no_reference:
        torch.manual_seed(0)
        with torch.device(args.device):
            ours = Qwen2(cfg).to(dtype).eval()
        with torch.no_grad():
            for name, param in ours.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.05)
        ours.merge_lora()
        return use_input_major_weights(ours), None
    from hf_qwen2 import peft_twin

    hf, ours = peft_twin(cfg)
    ours.merge_lora()
    return use_input_major_weights(ours.to(args.device, dtype)), hf.to(
        args.device, dtype
    )


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="0.5b")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument(
        "--prefix", type=int, default=300, help="prompt embedding positions"
    )
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's default)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="timed runs per implementation; the best is kept",
    )
    parser.add_argument(
        "--compile", action="store_true", help="also time our torch.compile'd model"
    )
    parser.add_argument(
        "--no-reference",
        action="store_true",
        help="skip transformers + peft (default for 7b)",
    )
    args = parser.parse_args()
    args.no_reference |= args.size == "7b"
    dtype, device = DTYPES[args.dtype], args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    bandwidth = measure_bandwidth(device)
    ours, hf = build_models(args, dtype)
    step_bytes = weight_bytes_per_step(ours)
    # decode steps/s at best
    ceilings = {name: rate / step_bytes for name, rate in bandwidth.items()}
    print(
        f"{args.size} {args.dtype} on {device} ({torch.get_num_threads()} threads): {step_bytes / 2**30:.2f} GiB of "
        f"weights per step; copy {bandwidth['copy'] / 1e9:.1f} GB/s -> roofline {ceilings['copy']:.2f} steps/s, "
        f"read {bandwidth['read'] / 1e9:.1f} GB/s -> {ceilings['read']:.2f} steps/s",
        flush=True,
    )
    embeds = torch.randn(1, args.prefix, ours.config.dim, device=device, dtype=dtype)
    mask = torch.ones(1, args.prefix, dtype=torch.long, device=device)

    def ours_run(model, beams):
        return lambda n: generate(
            model,
            embeds,
            mask,
            GenerationConfig(max_new_tokens=n, num_beams=beams, eos_token_id=None),
        )

    def hf_run(beams):
        return lambda n: hf.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            max_new_tokens=n,
            min_new_tokens=n,
            num_beams=beams,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )

    runs = {}  # name -> (run(new_tokens), the final norm that marks the end of the prefill)
    for beams, label in [(1, "greedy"), (4, "beam4")]:
        runs[f"ours_{label}"] = ours_run(ours, beams), ours.norm
        if hf is not None:
            runs[f"hf_{label}"] = hf_run(beams), hf.get_base_model().model.norm
    if args.compile:  # compiled code runs MKL, not oneDNN (linear.py): give it the usual weight layout
        plain = copy.deepcopy(ours)
        for module in plain.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.data = module.weight.data.contiguous()
        # decode steps through torch.compile (and CUDA graphs on CUDA)
        fast_decoding(plain, compile=True)
        for beams, label in [(1, "greedy"), (4, "beam4")]:
            runs[f"ours_compiled_{label}"] = ours_run(plain, beams), plain.norm
    results = {}
    with (
        torch.inference_mode(),
        Progress(len(runs) * (args.repeats + 1), "timing runs") as bar,
    ):
        for (
            name,
            (
                run,
                _,
            ),
            # warm-up; compiled runs at full length, so both compiles happen here
        ) in runs.items():
            run(args.new_tokens if "compiled" in name else 3)
            bar.update()
        # interleaved; keep each one's best run, other load on the machine is noise
        for _ in range(args.repeats):
            for name, (run, norm) in runs.items():
                figures = measure(run, args.new_tokens, norm, ceilings, device)
                if (
                    name not in results
                    or figures["e2e_tok_s"] > results[name]["e2e_tok_s"]
                ):
                    results[name] = figures
                bar.update()
    for name, figures in results.items():
        print(f"{name:22s} {figures}")

    summary = {
        "size": args.size,
        "dtype": args.dtype,
        "device": device,
        "threads": torch.get_num_threads(),
        "prefix": args.prefix,
        "new_tokens": args.new_tokens,
        "weight_gib_per_step": round(step_bytes / 2**30, 3),
        **{
            f"{name}_bandwidth_gb_s": round(rate / 1e9, 2)
            for name, rate in bandwidth.items()
        },
        **{
            f"{name}_roofline_steps_s": round(ceiling, 2)
            for name, ceiling in ceilings.items()
        },
    }
    for name, figures in results.items():
        summary.update({f"{name}_{key}": value for key, value in figures.items()})
    for label in ("greedy", "beam4"):
        for variant in ("ours", "ours_compiled"):
            if f"hf_{label}" in results and f"{variant}_{label}" in results:
                mine, theirs = results[f"{variant}_{label}"], results[f"hf_{label}"]
                for key in ("prefill_s", "decode_tok_s", "e2e_tok_s"):
                    ratio = (
                        (theirs[key] / mine[key])
                        if key == "prefill_s"
                        else mine[key] / theirs[key]
                    )
                    summary[
                        f"{variant}_over_hf_{label}_{key.removesuffix('_s')}_speedup"
                    ] = round(ratio, 2)
                    print(f"{variant} vs hf {label} {key}: {ratio:.2f}x faster")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
