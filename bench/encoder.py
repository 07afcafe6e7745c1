"""Speech-path speed: our Whisper-medium encoder (+ OSUM adaptor) vs openai-whisper's AudioEncoder, CPU float32.

Both get the same random weights (the same seed builds the same parameters in the same order; the run checks it by
comparing their outputs) and the same log-mel of the first 30 s of tests/.assets/sonnet1.wav (seeded noise if the
asset is missing). Each implementation runs in its own child process, so each peak RSS (ru_maxrss: weights,
activations and the Python/torch runtime) is its own. Timings are the median of `--runs` forwards after one
warm-up, under torch.inference_mode, with the same thread count.

OSUM does not pad to 30 s, so a 5 s clip costs us 250 frames; openai-whisper always pads the mel to 3000 frames.

    python bench/encoder.py [--runs 3] [--threads N]
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from osum_min.adaptor import ADAPTOR_PRESETS, Adaptor  # noqa: E402
from osum_min.audio import SAMPLE_RATE, load_audio, log_mel  # noqa: E402
from osum_min.encoder import ENCODER_PRESETS, WhisperEncoder  # noqa: E402
from osum_min.progress import Progress  # noqa: E402

RECORDING = ROOT / "tests" / ".assets" / "sonnet1.wav"
WHISPER_FRAMES = 3000
SEED = 0
# child name -> what it runs; each child times every clip it is given
CHILDREN = {
    "whisper": "openai-whisper AudioEncoder (pads every clip to 30 s)",
    "ours_encoder": "our WhisperEncoder alone",
    "ours_encoder_adaptor": "our WhisperEncoder + Adaptor (OSUM's speech path)",
}


def clip_mels(out_dir: Path) -> dict[str, Path]:
    """The 30 s and 5 s log-mels, written once so every child reads the same input."""
    if RECORDING.exists():
        wav = load_audio(RECORDING)[: 30 * SAMPLE_RATE]
    else:
        wav = 0.1 * torch.randn(30 * SAMPLE_RATE, generator=torch.Generator().manual_seed(SEED))
    paths = {}
    for name, seconds in (("30s", 30), ("5s", 5)):
        paths[name] = out_dir / f"mel_{name}.pt"
        torch.save(log_mel(wav[: seconds * SAMPLE_RATE])[None], paths[name])  # (1, frames, 80)
    return paths


def median_seconds(forward, runs: int, desc: str) -> float:
    times = []
    with Progress(runs + 1, desc, interval=10.0) as bar:
        for run in range(runs + 1):
            start = time.perf_counter()
            forward()
            if run:  # the first forward warms up allocator and kernels
                times.append(time.perf_counter() - start)
            bar.update()
    return statistics.median(times)


def build(child: str):
    """(forward(mel) -> encoder output, forward(mel) -> what the child times), built from SEED."""
    torch.manual_seed(SEED)
    if child == "whisper":
        from whisper.model import AudioEncoder

        c = ENCODER_PRESETS["whisper-medium"]
        peer = AudioEncoder(c.n_mels, c.max_positions, c.dim, c.heads, c.layers).eval()

        def whisper_forward(mel):  # (1, T, 80) -> pad to 3000 frames, whisper's (B, n_mels, T) layout
            return peer(torch.nn.functional.pad(mel, (0, 0, 0, WHISPER_FRAMES - mel.shape[1])).transpose(1, 2))
        return whisper_forward, whisper_forward
    encoder = WhisperEncoder(ENCODER_PRESETS["whisper-medium"]).eval()

    def encode(mel):
        return encoder(mel, torch.tensor([mel.shape[1]]))[0]
    if child == "ours_encoder":
        return encode, encode
    adaptor = Adaptor(ADAPTOR_PRESETS["osum"]).eval()

    def speech_path(mel):
        return adaptor(*encoder(mel, torch.tensor([mel.shape[1]])))[0]
    return encode, speech_path


@torch.inference_mode()
def run_child(child: str, mels: dict[str, Path], runs: int, threads: int, out_dir: Path) -> dict:
    torch.set_num_threads(threads)
    encode, timed = build(child)
    inputs = {name: torch.load(path) for name, path in mels.items()}
    torch.save(encode(inputs["30s"]), out_dir / f"{child}_encoder_out.pt")  # (1, 1500, 1024)
    seconds = {name: median_seconds(lambda: timed(mel), runs, f"{child} {name}") for name, mel in inputs.items()}
    return {"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def spawn(child: str, args, tmp: Path) -> dict:
    command = [sys.executable, __file__, "--child", child, "--tmp", str(tmp), "--runs", str(args.runs),
               "--threads", str(args.threads)]
    done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)  # progress goes to stderr
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed forwards per clip, after one warm-up")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--child", choices=CHILDREN, help=argparse.SUPPRESS)
    parser.add_argument("--tmp", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mels = {name: args.tmp / f"mel_{name}.pt" for name in ("30s", "5s")}
        print(json.dumps(run_child(args.child, mels, args.runs, args.threads, args.tmp)))
        return

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        clip_mels(tmp)
        print(f"Whisper-medium encoder, CPU float32, torch {torch.__version__}, {args.threads} threads, "
              f"median of {args.runs} after 1 warm-up; input: "
              f"{RECORDING.name if RECORDING.exists() else 'seeded noise'}", flush=True)
        results = {child: spawn(child, args, tmp) for child in CHILDREN}
        outputs = {child: torch.load(tmp / f"{child}_encoder_out.pt") for child in ("whisper", "ours_encoder")}
    same_weights_diff = (outputs["whisper"] - outputs["ours_encoder"]).abs().max().item()

    for child, description in CHILDREN.items():
        r = results[child]
        print(f"{description:52s} 30 s: {r['seconds']['30s']:6.2f} s   5 s: {r['seconds']['5s']:6.2f} s   "
              f"peak RSS {r['peak_rss_mb']:6.0f} MB")
    whisper, encoder, full = (results[c] for c in CHILDREN)
    ratios = {
        "speedup_30s_ours_encoder_over_whisper": whisper["seconds"]["30s"] / encoder["seconds"]["30s"],
        "speedup_30s_ours_encoder_adaptor_over_whisper": whisper["seconds"]["30s"] / full["seconds"]["30s"],
        "speedup_5s_ours_encoder_over_whisper": whisper["seconds"]["5s"] / encoder["seconds"]["5s"],
        "speedup_5s_ours_encoder_adaptor_over_whisper": whisper["seconds"]["5s"] / full["seconds"]["5s"],
        "peak_rss_ratio_ours_encoder_over_whisper": encoder["peak_rss_mb"] / whisper["peak_rss_mb"],
    }
    for name, value in ratios.items():
        print(f"{name}: {value:.3f}")
    print(f"encoder outputs, ours vs whisper (same weights, 30 s): max-abs difference {same_weights_diff:.1e}")
    figures = {"threads": args.threads, "runs": args.runs, "encoder_outputs_max_abs_diff": same_weights_diff}
    for child in CHILDREN:
        figures.update({f"{child}_{clip}_seconds": round(s, 3) for clip, s in results[child]["seconds"].items()})
        figures[f"{child}_peak_rss_mb"] = round(results[child]["peak_rss_mb"])
    figures.update({name: round(value, 3) for name, value in ratios.items()})
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
