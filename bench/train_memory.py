"""Training step time and peak memory of OSUM at batch 4 (issue 15): frozen weights in float32 or bf16, with and
without activation checkpointing, for the released fire_module and for link_and_lora.

Random weights are built directly on the device, at the released sizes (OSUM_PRESETS["osum"]) or, with --smoke,
the tiny ones; the batch is 4 clips of 7.5-10 s of random mel with 20 prompt and 30 label tokens each. A step is
what train.py runs: forward under bf16 autocast, backward, grad clipping, AdamW. The model is set up by the same
functions train.py calls (training.setup_model, training.make_optimizer). Peak memory is CUDA's allocator peak
after setup; on CPU it is the process's peak resident size, which only grows from run to run.

    python bench/train_memory.py [--device cuda] [--smoke]      # bench/gpu.py calls train_figures()
"""

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from osum_min.model.osum import OSUM, OSUM_PRESETS  # noqa: E402

# noqa: E402
from osum_min.training.steps import (
    FROZEN_DTYPES,
    make_optimizer,
    peak_memory_gib,
    setup_model,
)

RELEASED_FIRE_MODULE = "link_and_encoder_and_lora"
RUNS = {  # name -> (fire_module, frozen dtype, activation checkpointing)
    "released_fp32_frozen": (RELEASED_FIRE_MODULE, "fp32", False),
    "released_bf16_frozen": (RELEASED_FIRE_MODULE, "bf16", False),
    "released_bf16_frozen_ckpt": (RELEASED_FIRE_MODULE, "bf16", True),
    "link_and_lora_bf16_frozen": ("link_and_lora", "bf16", False),
    "link_and_lora_bf16_frozen_ckpt": ("link_and_lora", "bf16", True),
}


def random_batch(
    config,
    device: torch.device,
    batch: int = 4,
    prompt_tokens: int = 20,
    label_tokens: int = 30,
):
    """(mel (B, T, n_mels) zero-padded, mel_lens (B,), prompt_ids, labels): clips of 7.5-10 s, longest first."""
    generator = torch.Generator().manual_seed(0)
    mel_lens = (
        torch.randint(750, 1001, (batch,), generator=generator)
        .sort(descending=True)
        .values
    )
    mel = torch.randn(
        batch, int(mel_lens[0]), config.encoder.n_mels, generator=generator
    )
    mel *= (torch.arange(mel.shape[1])[None, :] < mel_lens[:, None])[..., None]
    vocab = min(config.llm.vocab_size, config.eod_id)
    prompt_ids = torch.randint(
        0, vocab, (batch, prompt_tokens), generator=generator
    ).tolist()
    labels = torch.randint(
        0, vocab, (batch, label_tokens), generator=generator
    ).tolist()
    return mel.to(device), mel_lens.to(device), prompt_ids, labels


def measure(
    config,
    fire_module: str,
    frozen_dtype: str,
    grad_checkpoint: bool,
    device: torch.device,
    steps: int,
    warmup: int,
) -> dict:
    """Median step seconds over `steps` (after `warmup` untimed ones) and the peak memory in GiB."""
    torch.manual_seed(0)
    with torch.device(device):
        model = OSUM(config)
    setup_model(model, fire_module, FROZEN_DTYPES[frozen_dtype], grad_checkpoint)
    optimizer, _ = make_optimizer(model, lr=5e-5, warmup_steps=8000)
    mel, mel_lens, prompt_ids, labels = random_batch(config, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(warmup + steps):
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(mel, mel_lens, prompt_ids, labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    figures = {
        "step_s": round(statistics.median(times[warmup:]), 4),
        "peak_gib": round(peak_memory_gib(device), 2),
        "loss": round(loss.item(), 4),
    }
    del model, optimizer, loss
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return figures


def train_figures(device, sizes: str = "released") -> dict:
    """The table for bench/gpu.py: per run `<name>_step_s`, `<name>_peak_gib`, and step-time ratios to today's
    (fp32 frozen, no checkpointing)."""
    if sizes not in ("released", "smoke"):
        raise ValueError(f"sizes {sizes!r}: choose 'released' or 'smoke'")
    device = torch.device(device)
    config = OSUM_PRESETS["osum" if sizes == "released" else "tiny"]
    figures = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else "cpu",
        "sizes": sizes,
        "batch": 4,
    }
    for name, (fire_module, frozen_dtype, grad_checkpoint) in RUNS.items():
        result = measure(
            config,
            fire_module,
            frozen_dtype,
            grad_checkpoint,
            device,
            *((5, 1) if sizes == "released" else (1, 0)),
        )
        figures.update({f"{name}_{key}": value for key, value in result.items()})
        print(
            f"{name:>32}: {result['step_s']:.3f} s/step, peak {result['peak_gib']:.2f} GiB",
            file=sys.stderr,
        )
    today = figures["released_fp32_frozen_step_s"]
    for name in RUNS:
        figures[f"{name}_step_ratio"] = round(figures[f"{name}_step_s"] / today, 3)
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes: checks that the script runs (CPU, < 1 min)",
    )
    args = parser.parse_args()
    print(json.dumps(train_figures(args.device, "smoke" if args.smoke else "released")))


if __name__ == "__main__":
    main()
