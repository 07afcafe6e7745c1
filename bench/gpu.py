"""The device check: OSUM at the released sizes on one GPU, against the memory roofline and transformers + peft.

Random weights at the released sizes (Whisper-medium encoder, adaptor, Qwen2-7B with OSUM's LoRA), built directly
on the device in bf16. In order, each section printing progress and surviving another's failure:
1. HBM read bandwidth (a 1 GiB sum) and the decode roofline it implies for the weights read per step;
2. the LLM alone, batch 1, a 300-position embedding prompt, eos off: greedy and beam 4 tokens/s for ours eager, ours
   with CUDA graphs of the eager step (from_pretrained's default on CUDA), ours compiled (torch.compile + CUDA
   graphs) and transformers + peft (LoRA unmerged, as OSUM runs it) on the same weights; the warm-up seconds;
3. whole OSUM from 10 s of log-mel: per-file latency at batch 1 and files/s at batch 8, default decoding (beam 4,
   repetition penalty 1.05), 64 tokens, eos off, CUDA graphs; eager greedy ms per step, whole OSUM against the LLM
   alone (the issue's greedy anomaly);
4. inference at batch 1, whole OSUM: peak GiB and greedy tokens/s, bf16 (CUDA graphs) and int8 weights (compiled);
5. training (bench/train_memory.py): step time and peak memory at batch 4 for the released fire_module and
   link_and_lora, float32 or bf16 frozen weights, with and without activation checkpointing.

    python bench/gpu.py            # CUDA; about 4 minutes from a cold start
    python bench/gpu.py --smoke    # the same code on the CPU at tiny sizes (the test suite runs it)

No soundfile in the import chain: the GPU image may lack it.
"""

import argparse
import gc
import json
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import measure, measure_bandwidth, sync, weight_bytes_per_step  # noqa: E402  (puts tests/ on the path)
from hf_qwen2 import peft_twin  # noqa: E402
from osum_min.model.adaptor import Adaptor  # noqa: E402
from osum_min.model.encoder import WhisperEncoder  # noqa: E402

# noqa: E402
from osum_min.model.generate import (
    DEFAULT_DECODING,
    GenerationConfig,
    fast_decoding,
    generate,
)
from osum_min.model.osum import OSUM, OSUM_PRESETS  # noqa: E402
from osum_min.model.qwen2 import Qwen2  # noqa: E402
from osum_min.training.steps import peak_memory_gib  # noqa: E402

SECTIONS = ("llm", "osum", "inference", "training")
# 20 prompt tokens
PROMPT = [
    17,
    230,
    511,
    42,
    901,
    7,
    333,
    18,
    64,
    5,
    250,
    99,
    12,
    640,
    77,
    3,
    402,
    88,
    21,
    1,
]


class Bench:
    """Figures collected section by section; a section that fails is recorded and the rest still run."""

    def __init__(self, device):
        self.device, self.figures, self.started = (
            torch.device(device),
            {},
            time.perf_counter(),
        )

    def log(self, message: str):
        print(f"[{time.perf_counter() - self.started:6.1f} s] {message}", flush=True)

    def section(self, name: str, run, *args):
        self.log(f"{name} ...")
        try:
            result = run(self, *args)
            self.log(f"{name}: {json.dumps(self.figures.get(name, {}))}")
            return result
        except Exception as err:  # noqa: BLE001  unattended: record it and go on
            traceback.print_exc()
            self.figures[f"{name}_error"] = f"{type(err).__name__}: {err}"[:300]
            return None

    def free(self):
        torch._dynamo.reset()  # compiled code can keep a freed model's weights alive
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()


def reference_and_ours(cfg, device, dtype):
    """(transformers + peft with non-zero LoRA B, ours with the same weights and LoRA merged), built on the device."""
    hf, ours = peft_twin(replace(cfg, lora_dropout=0.0), device=device, dtype=dtype)
    ours.merge_lora()
    return hf, ours


def speech_model(config, llm: Qwen2, device, dtype) -> OSUM:
    """A random OSUM around an LLM already built (the encoder and adaptor built on the device), readied for
    inference as from_pretrained does by default."""
    with torch.device("meta"):
        model = OSUM(replace(config, llm=llm.config))
    with torch.device(device):
        model.encoder = WhisperEncoder(config.encoder).to(dtype)
        model.adaptor = Adaptor(config.adaptor).to(dtype)
        model.speech_bos_eos = torch.nn.Parameter(
            torch.randn(2, llm.config.dim, dtype=dtype) * 0.02
        )
    model.llm = llm
    return model.eval().prepare_for_inference(device)


def llm_alone(bench, hf, ours, new_tokens, prefix, repeats):
    device = bench.device
    step_bytes = weight_bytes_per_step(ours)
    bandwidth = measure_bandwidth(device, gib=1.0 if device.type == "cuda" else 0.125)[
        "read"
    ]
    roofline = bandwidth / step_bytes
    bench.figures["roofline"] = {
        "read_bandwidth_gb_s": round(bandwidth / 1e9, 1),
        "weight_gib_per_step": round(step_bytes / 2**30, 2),
        "read_roofline_steps_s": round(roofline, 1),
    }
    embeds = torch.randn(
        1, prefix, ours.config.dim, device=device, dtype=ours.embed_tokens.weight.dtype
    )
    mask = torch.ones(1, prefix, dtype=torch.long, device=device)

    def ours_run(beams):
        return lambda n: generate(
            ours,
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

    figures = bench.figures.setdefault("llm_batch1", {})
    ceilings = {"read": roofline}

    def timed(name, run, norm):
        run(3)  # warm-up: allocator, kernels
        best = max(
            (measure(run, new_tokens, norm, ceilings, device) for _ in range(repeats)),
            key=lambda f: f["decode_tok_s"],
        )
        figures[f"{name}_tok_s"] = best["decode_tok_s"]
        figures[f"{name}_read_roofline_fraction"] = best["read_roofline_fraction"]
        bench.log(f"  {name}: {best}")

    variants = [("eager", None), ("compiled", True)] + (
        [("graphs", False)] if device.type == "cuda" else []
    )
    with torch.inference_mode():
        for beams, label in [(1, "greedy"), (4, "beam4")]:
            timed(f"hf_{label}", hf_run(beams), hf.get_base_model().model.norm)
        for (
            variant,
            compile,
            # eager; torch.compile (+ CUDA graphs); CUDA graphs of the eager step
        ) in variants:
            if compile is not None:
                fast_decoding(ours, compile)
                started = time.perf_counter()
                # compiles once per kind of shape, captures one CUDA graph per shape
                for beams in (
                    1,
                    4,
                ):
                    ours_run(beams)(new_tokens)
                sync(device)
                figures[f"{variant}_warmup_s"] = round(time.perf_counter() - started, 1)
            for beams, label in [(1, "greedy"), (4, "beam4")]:
                timed(f"ours_{variant}_{label}", ours_run(beams), ours.norm)
                figures[f"ours_{variant}_over_hf_{label}"] = round(
                    figures[f"ours_{variant}_{label}_tok_s"]
                    / figures[f"hf_{label}_tok_s"],
                    2,
                )
    ours.fast_decode_step = None


def seconds_of(run, device) -> float:
    """Wall seconds of `run()`, the device's queued work included."""
    sync(device)
    started = time.perf_counter()
    run()
    sync(device)
    return time.perf_counter() - started


def whole_osum(bench, model: OSUM, clip_frames: int, new_tokens: int):
    device, figures = bench.device, bench.figures.setdefault("osum", {})
    generator = torch.Generator(device=device).manual_seed(0)
    # 8 clips of 10 s
    mel = torch.randn(8, clip_frames, 80, device=device, generator=generator)
    mel_lens = torch.full((8,), clip_frames, device=device)
    settings = {
        **DEFAULT_DECODING.__dict__,
        "max_new_tokens": new_tokens,
        "eos_token_id": None,
    }
    # warm-up (the graphs of these shapes)
    model.generate(mel[:1], mel_lens[:1], [PROMPT], **settings)
    model.generate(mel, mel_lens, [PROMPT] * 8, **settings)
    alone = [
        seconds_of(
            lambda i=i: model.generate(
                mel[i : i + 1], mel_lens[i : i + 1], [PROMPT], **settings
            ),
            device,
        )
        for i in range(4)
    ]
    together = seconds_of(
        lambda: model.generate(mel, mel_lens, [PROMPT] * 8, **settings), device
    )
    figures.update(
        {
            "clip_s": clip_frames / 100,
            "new_tokens": new_tokens,
            "decoding": "beam 4, penalty 1.05",
            "batch1_s_per_file": round(min(alone), 3),
            "batch8_files_per_s": round(8 / together, 2),
            "batch8_over_batch1_throughput": round(min(alone) * 8 / together, 2),
        }
    )
    greedy = {**settings, "num_beams": 1}
    step_ms = {}
    with torch.inference_mode():
        embeds = torch.randn(
            1,
            150,
            model.llm.config.dim,
            device=device,
            dtype=model.speech_bos_eos.dtype,
        )
        # eager, as the issue ran it
        fast, model.llm.fast_decode_step = (
            model.llm.fast_decode_step,
            None,
        )
        for name, run in [
            (
                "osum",
                lambda n: model.generate(
                    mel[:1], mel_lens[:1], [PROMPT], **{**greedy, "max_new_tokens": n}
                ),
            ),
            (
                "llm_alone",
                lambda n: generate(
                    model.llm,
                    embeds,
                    None,
                    GenerationConfig(
                        max_new_tokens=n, repetition_penalty=1.05, eos_token_id=None
                    ),
                ),
            ),
        ]:
            run(2)
            short, full = (
                seconds_of(lambda: run(2), device),
                seconds_of(lambda: run(new_tokens), device),
            )
            step_ms[name] = round((full - short) / (new_tokens - 2) * 1000, 2)
        model.llm.fast_decode_step = fast
    figures.update(
        {
            "eager_greedy_penalty_ms_per_step_osum": step_ms["osum"],
            "eager_greedy_penalty_ms_per_step_llm_alone": step_ms["llm_alone"],
        }
    )


def inference_memory(
    bench, model: OSUM, clip_frames: int, new_tokens: int, quantize: bool
):
    """Peak memory of a batch-1 greedy run of the whole model and its tokens/s: bf16 weights as from_pretrained
    gives them by default, or int8 weights compiled (torch.compile fuses their dequantisation into the matmul)."""
    device, label = bench.device, "int8" if quantize else "bf16"
    if quantize:
        model.prepare_for_inference(device, compile=True, quantize="int8")
    bench.free()
    mel = torch.randn(1, clip_frames, 80, device=device)
    mel_lens = torch.tensor([clip_frames], device=device)
    settings = {"max_new_tokens": new_tokens, "eos_token_id": None}
    model.generate(mel, mel_lens, [PROMPT], **settings)  # warm-up and compile
    seconds = seconds_of(
        lambda: model.generate(mel, mel_lens, [PROMPT], **settings), device
    )
    figures = bench.figures.setdefault("inference_batch1", {})
    figures[f"{label}_e2e_tok_s"] = round(new_tokens / seconds, 1)
    if device.type == "cuda":
        figures[f"{label}_peak_gib"] = round(peak_memory_gib(device), 2)


def training(bench, smoke: bool):
    from train_memory import train_figures

    bench.figures["training"] = train_figures(
        bench.device, sizes="smoke" if smoke else "released"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="CPU, tiny sizes: the same code, in seconds",
    )
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="timed runs per figure after a warm-up; best kept",
    )
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections of {','.join(SECTIONS)} (to split the check over two runs)",
    )
    args = parser.parse_args()
    only = set(args.only.split(","))
    if only - set(SECTIONS):
        parser.error(f"--only: unknown sections {sorted(only - set(SECTIONS))}")
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print(
            "bench/gpu.py: error: no CUDA device (use --smoke on the CPU)",
            file=sys.stderr,
        )
        return 2
    bench = Bench(device)
    dtype = torch.float32 if args.smoke else torch.bfloat16
    config = OSUM_PRESETS["tiny" if args.smoke else "osum"]
    new_tokens, clip_frames = (8, 200) if args.smoke else (args.new_tokens, 1000)
    bench.figures["setup"] = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "dtype": str(dtype).removeprefix("torch."),
        "sizes": "tiny"
        if args.smoke
        else "released (Whisper-medium, adaptor, Qwen2-7B)",
    }
    pair = bench.section(
        "build", lambda _: reference_and_ours(config.llm, device, dtype)
    )
    if pair is None:
        print(json.dumps(bench.figures))
        return 1
    hf, ours = pair
    if "llm" in only:
        bench.section(
            "llm_batch1",
            llm_alone,
            hf,
            ours,
            new_tokens,
            300 if not args.smoke else 30,
            args.repeats,
        )
    del hf, pair
    bench.free()
    model = speech_model(config, ours, device, dtype)
    if "osum" in only:
        bench.section("osum", whole_osum, model, clip_frames, new_tokens)
    for quantize in (False, True) if "inference" in only else ():
        bench.section(
            "inference_batch1",
            inference_memory,
            model,
            clip_frames,
            new_tokens,
            quantize,
        )
    del model, ours
    bench.free()
    if "training" in only:
        bench.section("training", training, args.smoke)
    bench.figures["total_s"] = round(time.perf_counter() - bench.started, 1)
    print(json.dumps(bench.figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
