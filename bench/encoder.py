"""Speech-path speed: our Whisper-medium encoder (+ OSUM adaptor) vs openai-whisper's AudioEncoder, CPU float32.

Both get the same random weights (the same seed builds the same parameters in the same order; the run checks it by
comparing their outputs) and the same log-mel of the first 30 s of tests/.assets/sonnet1.wav (seeded noise if the
asset is missing). Each implementation runs in its own child process, so each peak RSS (ru_maxrss: weights,
activations and the Python/torch runtime, for whisper also its package's imports) is its own. The children take
turns forward by forward, so a change of load on the machine hits all of them alike; timings are the median of
`--runs` forwards per clip after one warm-up, under torch.inference_mode, with the same thread count.

OSUM does not pad to 30 s, so a 5 s clip costs us 250 frames; openai-whisper always pads the mel to 3000 frames.

    python bench/encoder.py [--runs 3] [--threads N]
"""

import argparse
import json
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
from osum_min.model.adaptor import Adaptor, AdaptorConfig  # noqa: E402
from osum_min.audio import SAMPLE_RATE, load_audio, log_mel  # noqa: E402
from osum_min.model.encoder import ENCODER_PRESETS, WhisperEncoder  # noqa: E402
from osum_min.progress import Progress  # noqa: E402

RECORDING = ROOT / "tests" / ".assets" / "sonnet1.wav"
WHISPER_FRAMES = 3000
SEED = 0
CLIPS = {"30s": 30, "5s": 5}  # name -> seconds of audio
# child name -> what it runs; each child times every clip it is given
CHILDREN = {
    "whisper": "openai-whisper AudioEncoder (pads every clip to 30 s)",
    "ours_encoder": "our WhisperEncoder alone",
    "ours_encoder_adaptor": "our WhisperEncoder + Adaptor (OSUM's speech path)",
}


def write_mels(out_dir: Path) -> None:
    """The 30 s and 5 s log-mels, written once so every child reads the same input."""
    if RECORDING.exists():
        wav = load_audio(RECORDING)[: 30 * SAMPLE_RATE]
    else:
        wav = 0.1 * torch.randn(
            30 * SAMPLE_RATE, generator=torch.Generator().manual_seed(SEED)
        )
    for name, seconds in CLIPS.items():
        # (1, frames, 80)
        torch.save(
            log_mel(wav[: seconds * SAMPLE_RATE])[None], out_dir / f"mel_{name}.pt"
        )


def build(child: str):
    """(forward(mel) -> encoder output, forward(mel) -> what the child times), built from SEED."""
    torch.manual_seed(SEED)
    if child == "whisper":
        from whisper.model import AudioEncoder

        c = ENCODER_PRESETS["whisper-medium"]
        peer = AudioEncoder(c.n_mels, c.max_positions, c.dim, c.heads, c.layers).eval()

        # (1, T, 80) -> pad to 3000 frames, whisper's (B, n_mels, T) layout
        def whisper_forward(
            mel,
        ):
            return peer(
                torch.nn.functional.pad(
                    mel, (0, 0, 0, WHISPER_FRAMES - mel.shape[1])
                ).transpose(1, 2)
            )

        return whisper_forward, whisper_forward
    encoder = WhisperEncoder(ENCODER_PRESETS["whisper-medium"]).eval()

    def encode(mel):
        return encoder(mel, torch.tensor([mel.shape[1]]))[0]

    if child == "ours_encoder":
        return encode, encode
    adaptor = Adaptor(AdaptorConfig()).eval()  # the released sizes

    def speech_path(mel):
        return adaptor(*encoder(mel, torch.tensor([mel.shape[1]])))[0]

    return encode, speech_path


@torch.inference_mode()
def serve(child: str, mel_dir: Path, threads: int) -> None:
    """Child: build, warm up, then time one forward per clip name read from stdin; 'quit' reports peak RSS."""
    torch.set_num_threads(threads)
    encode, timed = build(child)
    mels = {name: torch.load(mel_dir / f"mel_{name}.pt") for name in CLIPS}
    # (1, 1500, 1024); warms up the encoder
    torch.save(encode(mels["30s"]), mel_dir / f"{child}_encoder_out.pt")
    timed(mels["5s"])  # and the short-clip path (the adaptor too)
    print("ready", flush=True)
    for clip in sys.stdin:
        if clip.strip() == "quit":
            break
        start = time.perf_counter()
        timed(mels[clip.strip()])
        print(time.perf_counter() - start, flush=True)
    # KiB -> MiB
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, flush=True)


def measure(args, mel_dir: Path) -> tuple[dict, dict]:
    """Round-robin the children forward by forward, so a load change on the machine hits all of them alike.

    Returns ({child: {clip: median seconds}}, {child: peak RSS MiB})."""
    children = {
        child: subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--child",
                child,
                "--tmp",
                str(mel_dir),
                "--threads",
                str(args.threads),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for child in CHILDREN
    }
    for child, process in children.items():
        if process.stdout.readline().strip() != "ready":
            sys.exit(f"bench child {child} failed to start")
    times = {child: {clip: [] for clip in CLIPS} for child in CHILDREN}
    with Progress(
        args.runs * len(CLIPS) * len(CHILDREN), "timed forwards", interval=10.0
    ) as bar:
        for _ in range(args.runs):
            for clip in CLIPS:
                for child, process in children.items():
                    process.stdin.write(clip + "\n")
                    process.stdin.flush()
                    times[child][clip].append(float(process.stdout.readline()))
                    bar.update()
    peaks = {}
    for child, process in children.items():
        process.stdin.write("quit\n")
        process.stdin.flush()
        peaks[child] = float(process.stdout.readline())
        process.wait()
    return {
        c: {clip: statistics.median(t) for clip, t in by_clip.items()}
        for c, by_clip in times.items()
    }, peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", type=int, default=3, help="timed forwards per clip and implementation"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--child", choices=CHILDREN, help=argparse.SUPPRESS)
    parser.add_argument("--tmp", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return serve(args.child, args.tmp, args.threads)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        write_mels(tmp)
        print(
            f"Whisper-medium encoder, CPU float32, torch {torch.__version__}, {args.threads} threads, "
            f"median of {args.runs} turns after 1 warm-up; input: "
            f"{RECORDING.name if RECORDING.exists() else 'seeded noise'}",
            flush=True,
        )
        seconds, peaks = measure(args, tmp)
        outputs = {
            child: torch.load(tmp / f"{child}_encoder_out.pt")
            for child in ("whisper", "ours_encoder")
        }
    same_weights_diff = (
        (outputs["whisper"] - outputs["ours_encoder"]).abs().max().item()
    )

    for child, description in CHILDREN.items():
        print(
            f"{description:52s} 30 s: {seconds[child]['30s']:6.2f} s   5 s: {seconds[child]['5s']:6.2f} s   "
            f"peak RSS {peaks[child]:5.0f} MiB"
        )
    ratios = {
        f"speedup_{clip}_{child}_over_whisper": seconds["whisper"][clip]
        / seconds[child][clip]
        for child in ("ours_encoder", "ours_encoder_adaptor")
        for clip in CLIPS
    }
    ratios.update(
        {
            f"peak_rss_ratio_{child}_over_whisper": peaks[child] / peaks["whisper"]
            for child in ("ours_encoder", "ours_encoder_adaptor")
        }
    )
    for name, value in ratios.items():
        print(f"{name}: {value:.3f}")
    print(
        f"encoder outputs, ours vs whisper (same weights, 30 s): max-abs difference {same_weights_diff:.1e}"
    )
    figures = {
        "threads": args.threads,
        "runs": args.runs,
        "encoder_outputs_max_abs_diff": same_weights_diff,
    }
    for child in CHILDREN:
        figures.update(
            {
                f"{child}_{clip}_seconds": round(t, 3)
                for clip, t in seconds[child].items()
            }
        )
        figures[f"{child}_peak_rss_mib"] = round(peaks[child])
    figures.update({name: round(value, 3) for name, value in ratios.items()})
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
