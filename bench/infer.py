"""Whole-pipeline throughput of infer.py at --batch-size 1 against --batch-size 8, in the same run.

20 synthetic clips of 5-30 s go through infer.py's own path (read file, cut windows, log-mel, encoder, adaptor,
Qwen2 decoding) with a random-weight OSUM: Whisper-tiny-sized encoder and adaptor, and a Qwen2-0.5B-sized LLM
(24 layers, hidden 896, vocabulary 151936). Decoding is infer.py's default (beam 4, repetition penalty 1.05) with
eos disabled, so every clip decodes exactly `--new-tokens` tokens and both batch sizes do the same work. 64 tokens is
a transcript's length for the clips' mean of 17.5 s (speech runs at ~3.5 Qwen2 tokens/s in English and Mandarin);
SRWT's `<start, end>` marks make its outputs ~10x longer (`--new-tokens 400`, infer.py's cap). Token ids only (a
random model has no tokenizer). The two runs do the same math per clip, but decode steps round differently with
the number of rows, so on a near-tie beam search can take another path: the clips whose ids differ are counted, with
the token where they part.

    python bench/infer.py                      # CPU, ~3 min on 2 cores
    python bench/infer.py --beams 1            # greedy
    python bench/infer.py --device cuda --new-tokens 32
"""

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import soundfile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from osum_min.model.adaptor import AdaptorConfig  # noqa: E402
from osum_min.audio import SAMPLE_RATE  # noqa: E402
from osum_min.model.encoder import ENCODER_PRESETS  # noqa: E402
from osum_min.model.generate import DEFAULT_DECODING  # noqa: E402
from osum_min.inference.inputs import collect_inputs  # noqa: E402
from osum_min.model.osum import OSUM, OSUMConfig  # noqa: E402
from osum_min.inference.pipeline import Pipeline, Request  # noqa: E402
from osum_min.progress import Progress  # noqa: E402
from osum_min.model.qwen2 import LLM_PRESETS  # noqa: E402


def write_clips(directory: Path, count: int, seed: int) -> list[Path]:
    """Noisy harmonic tones with pauses, 5-30 s, as 16 kHz wav files."""
    rng = np.random.default_rng(seed)
    paths = []
    for number, seconds in enumerate(np.linspace(5, 30, count)):
        t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        pitch = 120 + 80 * rng.random()
        # syllable-like on/off
        voiced = np.sin(2 * np.pi * 0.7 * t + rng.random() * 6) > -0.3
        wav = (
            0.2
            * voiced
            * sum(np.sin(2 * np.pi * pitch * k * t) / k for k in range(1, 5))
        )
        wav = (wav + 0.01 * rng.standard_normal(len(t))).astype(np.float32)
        paths.append(directory / f"clip{number:02d}.wav")
        soundfile.write(paths[-1], wav, SAMPLE_RATE)
    return paths


def first_difference(a: list[int], b: list[int]) -> int:
    return next(
        (t for t, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))
    )


def run(model, items, decoding, batch_size: int) -> tuple[float, dict]:
    outputs = {}
    started = time.perf_counter()
    with Progress(len(items), f"batch {batch_size}") as bar:
        requests = [
            Request(
                item.path, prompt_ids=[17, 230, 511, 42, 901, 7, 333], config=decoding
            )
            for item in items
        ]
        for index, answer in Pipeline(model, None, batch_size).run(requests):
            outputs[index] = answer.decoded.ids
            bar.update()
    return time.perf_counter() - started, outputs


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clips", type=int, default=20)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--beams", type=int, default=DEFAULT_DECODING.num_beams)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    args = parser.parse_args()

    torch.manual_seed(0)
    encoder = ENCODER_PRESETS["whisper-tiny"]
    config = OSUMConfig(
        encoder=encoder,
        adaptor=AdaptorConfig(dim=encoder.dim, llm_dim=896),
        llm=LLM_PRESETS["qwen2-0.5b"],
    )
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    model = OSUM(config)
    torch.nn.init.normal_(model.speech_bos_eos, std=0.02)
    # as OSUM.from_pretrained does
    model = model.to(args.device, dtype).eval().prepare_for_inference(args.device)
    decoding = replace(
        DEFAULT_DECODING,
        max_new_tokens=args.new_tokens,
        num_beams=args.beams,
        eos_token_id=None,
    )
    with tempfile.TemporaryDirectory() as tmp:
        items = collect_inputs(
            [str(p) for p in write_clips(Path(tmp), args.clips, seed=0)]
        )
        audio_seconds = sum(item.seconds for item in items)
        run(model, items[:1], decoding, 1)  # warm-up: allocator, kernels
        seconds_1, outputs_1 = run(model, items, decoding, 1)
        seconds_8, outputs_8 = run(model, items, decoding, 8)
    # clip -> the token where they part
    parted = {
        index: first_difference(sum(outputs_1[index], []), sum(outputs_8[index], []))
        for index in outputs_1
        if outputs_1[index] != outputs_8[index]
    }
    figures = {
        "clips": args.clips,
        "audio_seconds": round(audio_seconds, 1),
        "new_tokens": args.new_tokens,
        "beams": args.beams,
        "device": args.device,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "llm": "random Qwen2-0.5B-sized (24x896, vocab 151936)",
        "encoder": "random Whisper-tiny-sized (4x384)",
        "batch1_files_per_s": round(args.clips / seconds_1, 3),
        "batch8_files_per_s": round(args.clips / seconds_8, 3),
        "batch1_rtf": round(seconds_1 / audio_seconds, 4),
        "batch8_rtf": round(seconds_8 / audio_seconds, 4),
        "batch8_over_batch1_throughput": round(seconds_1 / seconds_8, 2),
        "clips_with_identical_ids": args.clips - len(parted),
        "first_differing_token_per_clip": parted,
    }
    print(
        f"{args.clips} clips, {audio_seconds:.0f} s of audio, {args.new_tokens} new tokens, beam {args.beams}, "
        f"{args.device} {args.dtype}, {torch.get_num_threads()} threads"
    )
    print(
        f"batch 1: {seconds_1:7.1f} s  {figures['batch1_files_per_s']:.3f} files/s  RTF {figures['batch1_rtf']:.4f}"
    )
    print(
        f"batch 8: {seconds_8:7.1f} s  {figures['batch8_files_per_s']:.3f} files/s  RTF {figures['batch8_rtf']:.4f}"
    )
    print(
        f"batch 8 / batch 1 throughput: {figures['batch8_over_batch1_throughput']:.2f}x; identical ids for "
        f"{args.clips - len(parted)} of {args.clips} clips"
        + (f" (clip: token where they part {parted})" if parted else "")
    )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
