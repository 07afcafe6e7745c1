"""osum-mini as a user meets it: one 10 s real clip with SRWT end to end, and WER on real read speech.

1. `infer.py --weights DIR --task srwt CLIP` as a fresh process, default decoding (beam 4, repetition penalty
   1.05), timed from the command's start to its exit (loading included), `--runs` times; the target is 10 s
   for a 10 s clip on 2 cores (issue 29). The clip is seconds 2.3-12.3 of the LibriVox Sonnet 1 reading
   (tests/assets.py fetches it).
2. `eval.py run wenet` (ASR, WER, greedy) on every real recording the tests use: CMU ARCTIC a0007, the
   whole Sonnet 1 reading (53 s, cut at quiet points), examples/mini/sonnet1.wav and Debian's eight alsa-utils
   phrases ("Front Center", ...), each scored against its known words.

    python bench/mini.py                          # weights/osum-mini (convert.py --mini first)
    python bench/mini.py --weights runs/mini/final --runs 3
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import soundfile

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "tests" / ".assets"
ALSA = Path("/usr/share/sounds/alsa")
TARGET_S = 10.0


def sonnet_text() -> str:
    """Sonnet 1's 14 lines (the file's first line is the number, which the reader says too)."""
    return " ".join((ASSETS / "sonnet1.txt").read_text().split())


def real_recordings() -> list[tuple[str, Path, str]]:
    """(key, audio, words) for each real recording that is on this machine."""
    items = [
        (
            "arctic_a0007",
            ASSETS / "arctic_a0007.wav",
            "And you always want to see it in the superlative degree.",
        ),
        ("sonnet1_full", ASSETS / "sonnet1.wav", sonnet_text()),
        (
            "sonnet1_clip",
            ROOT / "examples" / "mini" / "sonnet1.wav",
            (ROOT / "examples" / "mini" / "sonnet1.txt").read_text().strip(),
        ),
    ]
    for name in ("Front_Center", "Front_Left", "Front_Right", "Rear_Center"):
        items.append((name, ALSA / f"{name}.wav", name.replace("_", " ")))
    for name in ("Rear_Left", "Rear_Right", "Side_Left", "Side_Right"):
        items.append((name, ALSA / f"{name}.wav", name.replace("_", " ")))
    return [item for item in items if item[1].exists()]


def ten_second_clip(directory: Path) -> Path:
    """Seconds 2.3-12.3 of the Sonnet 1 reading, as 16 kHz wav."""
    audio, rate = soundfile.read(ASSETS / "sonnet1.wav", dtype="float32")
    path = directory / "sonnet1_10s.wav"
    soundfile.write(path, audio[int(2.3 * rate) : int(12.3 * rate)], rate)
    return path


def time_srwt(weights: str, clip: Path, runs: int) -> tuple[list[float], str]:
    """Wall seconds of each `infer.py --task srwt` process, and its last answer."""
    seconds, answer = [], ""
    command = [sys.executable, str(ROOT / "infer.py"), "--weights", weights]
    command += ["--task", "srwt", str(clip)]
    for run in range(runs):
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        seconds.append(time.perf_counter() - start)
        if done.returncode:
            sys.exit(f"infer.py failed: {done.stderr.strip()}")
        answer = done.stdout.strip()
        print(f"run {run + 1}: {seconds[-1]:.2f} s", flush=True)
    return seconds, answer


def real_wer(weights: str, directory: Path) -> dict:
    """eval.py run wenet over the real recordings: WER per file and pooled."""
    items = real_recordings()
    if not items:
        sys.exit("no real recordings here: run python tests/assets.py")
    lines = [
        {"key": key, "wav": str(path), "txt": words, "task": "<TRANSCRIBE>"}
        for key, path, words in items
    ]
    data = directory / "real.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = directory / "real_eval"
    command = [sys.executable, str(ROOT / "eval.py"), "run", "wenet", str(data)]
    command += ["--weights", weights, "--out", str(out), "--beams", "1"]
    command += ["--metric", "wer", "--language", "en"]
    subprocess.run(command, check=True)
    refs = dict(
        line.split(" ", 1) for line in (out / "ref.txt").read_text().splitlines()
    )
    hyps = {}
    for line in (out / "hyp.txt").read_text().splitlines():
        key, _, text = line.partition(" ")
        hyps[key] = text
    for key in refs:
        print(f"{key}: ref {refs[key]!r}\n{' ' * len(key)}  hyp {hyps.get(key, '')!r}")
    results = json.loads((out / "results.json").read_text())
    return results["rows"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default="mini")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if not (ASSETS / "sonnet1.wav").exists():
        sys.exit("tests/.assets/sonnet1.wav is missing: run python tests/assets.py")
    with tempfile.TemporaryDirectory() as tmp:
        clip = ten_second_clip(Path(tmp))
        seconds, answer = time_srwt(args.weights, clip, args.runs)
        print(f"SRWT answer: {answer}")
        rows = real_wer(args.weights, Path(tmp))
    median = statistics.median(seconds)
    figures = {
        "clip_s": 10.0,
        "srwt_end_to_end_s": [round(s, 2) for s in seconds],
        "srwt_end_to_end_median_s": round(median, 2),
        "target_s": TARGET_S,
        "median_over_target": round(median / TARGET_S, 3),
        "real_speech": rows,
    }
    print(json.dumps(figures, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
