"""Memory of converting and loading a released-layout checkpoint: peak anonymous RSS against the tensor sizes.

    python bench/convert.py [--llm-layers 2] [--full] [--workdir /tmp/osum_bench_convert]

Writes a random bf16 checkpoint with the released model's keys and shapes (fewer LLM layers unless --full: the
full file is ~18 GB), converts it with convert.py and loads the result with OSUM.from_pretrained, each step in its
own process. Peak `RssAnon` (sampled from /proc/self/status) counts copies we make; pages of a memory-mapped file
are not a copy. Targets: conversion < 3x the largest single tensor; loading <= 1.1x the weights' size.
"""

import argparse
import csv
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def rss_anon_bytes() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def measure(fn) -> tuple[float, int]:
    """Run fn while a thread samples RssAnon every 5 ms; returns (seconds, peak anonymous bytes above start)."""
    base, peak, done = rss_anon_bytes(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_anon_bytes())
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    done.set()
    thread.join()
    return seconds, max(peak[0], rss_anon_bytes()) - base


def layout(llm_layers: int) -> dict[str, tuple[int, ...]]:
    rows = csv.DictReader(
        open(ROOT / "tests/fixtures/checkpoint_layout.tsv"), delimiter="\t"
    )
    keep = {}
    for row in rows:
        key = row["key"]
        if (
            ".layers." in key
            and int(key.split(".layers.")[1].split(".")[0]) >= llm_layers
        ):
            continue
        keep[key] = tuple(int(n) for n in row["shape"].split("x"))
    return keep


def make_checkpoint(path: Path, llm_layers: int) -> None:
    import torch

    llm = "llama_model.base_model.model."
    state = {
        key: torch.randn(shape, dtype=torch.bfloat16)
        for key, shape in layout(llm_layers).items()
        if key not in ("embed_tokens.weight", "lm_head.weight")
    }
    # the alias keys share storage with the LLM's tensors, as in the original's state_dict
    state["embed_tokens.weight"] = state[llm + "model.embed_tokens.weight"]
    state["lm_head.weight"] = state[llm + "lm_head.weight"]
    torch.save(state, path)


def step_convert(workdir: Path, llm_layers: int) -> dict:
    import convert
    from osum_min.convert.original import RELEASED_CONFIG, config_from_original

    config = json.loads(RELEASED_CONFIG.read_text())
    config["llm_config"]["num_hidden_layers"] = llm_layers
    config = config_from_original(config)
    largest = max(_numel(shape) for shape in layout(llm_layers).values()) * 2  # bf16
    seconds, peak = measure(
        lambda: convert.convert(
            workdir / "infer.pt", workdir / "osum", config, dtype=None
        )
    )
    return {
        "convert_seconds": seconds,
        "convert_peak_anon_bytes": peak,
        "largest_tensor_bytes": largest,
    }


def step_load(workdir: Path) -> dict:
    import torch
    from osum_min.model.osum import OSUM
    from osum_min.weights import weight_files

    weights_bytes = sum(p.stat().st_size for p in weight_files(workdir / "osum"))
    holder = {}
    seconds, peak = measure(
        lambda: holder.setdefault(
            "m",
            OSUM.from_pretrained(workdir / "osum", device="cpu", dtype=torch.bfloat16),
        )
    )
    return {
        "load_seconds": seconds,
        "load_peak_anon_bytes": peak,
        "weights_bytes": weights_bytes,
    }


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def run_step(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llm-layers", type=int, default=2)
    parser.add_argument(
        "--full", action="store_true", help="all 28 LLM layers (~18 GB on disk)"
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/osum_bench_convert"))
    parser.add_argument(
        "--step", choices=["make", "convert", "load"], help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    layers = 28 if args.full else args.llm_layers
    if args.step == "make":
        make_checkpoint(args.workdir / "infer.pt", layers)
        print(json.dumps({}))
        return
    if args.step == "convert":
        print(json.dumps(step_convert(args.workdir, layers)))
        return
    if args.step == "load":
        print(json.dumps(step_load(args.workdir)))
        return
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    try:
        print(
            f"writing a random released-layout checkpoint with {layers} LLM layers ...",
            file=sys.stderr,
        )
        run_step(
            "--step",
            "make",
            "--llm-layers",
            str(layers),
            "--workdir",
            str(args.workdir),
        )
        checkpoint_bytes = (args.workdir / "infer.pt").stat().st_size
        result = {"llm_layers": layers, "checkpoint_bytes": checkpoint_bytes}
        result |= run_step(
            "--step",
            "convert",
            "--llm-layers",
            str(layers),
            "--workdir",
            str(args.workdir),
        )
        result |= run_step("--step", "load", "--workdir", str(args.workdir))
    finally:
        shutil.rmtree(args.workdir, ignore_errors=True)
    result["convert_peak_over_largest_tensor"] = (
        result["convert_peak_anon_bytes"] / result["largest_tensor_bytes"]
    )
    result["load_peak_over_weights"] = (
        result["load_peak_anon_bytes"] / result["weights_bytes"]
    )
    gib = 2**30
    print(
        f"checkpoint {checkpoint_bytes / gib:.2f} GiB ({layers} LLM layers), largest tensor "
        f"{result['largest_tensor_bytes'] / gib:.2f} GiB"
    )
    print(
        f"convert: {result['convert_seconds']:.1f} s, peak anon {result['convert_peak_anon_bytes'] / gib:.2f} GiB "
        f"= {result['convert_peak_over_largest_tensor']:.2f}x largest tensor (target < 3)"
    )
    print(
        f"load:    {result['load_seconds']:.1f} s, peak anon {result['load_peak_anon_bytes'] / gib:.2f} GiB "
        f"= {result['load_peak_over_weights']:.2f}x weights (target <= 1.1)"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
