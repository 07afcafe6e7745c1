"""The released-size OSUM on this CPU: load, memory and speed per precision, each beside its read roofline.

Writes a random checkpoint of the released model's sizes (OSUM preset "osum": 7.99 B parameters) in our converted
layout (bf16 safetensors, ~16 GB) tensor by tensor to --dir, unless one is there. Then for each --modes that fits
(load_for_inference's precision check, before loading), in its OWN process:
- load seconds and peak memory through loading (RssAnon: what the kernel cannot drop; and total RSS);
- the encoder + adaptor on a 10 s clip;
- the LLM prefill of a request (prompt + that clip's speech positions) and decode tokens/s greedy and beam 4,
  each beside its roofline: bytes of weights read per decode step / the read bandwidth measured in this run;
- one whole default request: log-mel of a 10 s waveform, beam 4, repetition penalty 1.05, 64 new tokens;
- peak RssAnon / RSS over the whole process.
Ends with ONE JSON line. Use a small --preset first (seconds), then the released one under the machine's lock:

    python bench/cpu_7b.py --preset tiny --dir /tmp/osum-tiny --modes float32 int8
    python bench/cpu_7b.py --dir /tmp/osum-7b --modes bf16 int8
"""

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from decode import measure, measure_bandwidth  # noqa: E402
from osum_min.audio import log_mel  # noqa: E402
from osum_min.model.generate import GenerationConfig, generate  # noqa: E402
from osum_min.model.osum import OSUM, OSUM_PRESETS, OSUMConfig, load_for_inference  # noqa: E402
from osum_min.model.precision import PrecisionError  # noqa: E402
from osum_min.model.quantize import Int8Linear  # noqa: E402
from osum_min.progress import Progress  # noqa: E402
from osum_min.weights import save_weights  # noqa: E402

MODES = {  # name: (float dtype, quantize)
    "float32": (torch.float32, None),
    "bf16": (torch.bfloat16, None),
    "int8": (torch.bfloat16, "int8"),  # int8 LLM linears, bf16 around them
}
PROMPT_TOKENS = 20
GIB = 2**30


class Memory:
    """Peak RssAnon and VmRSS of this process, sampled every 10 ms by a thread."""

    def __init__(self):
        self.peaks = {"RssAnon": 0, "VmRSS": 0}
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    @staticmethod
    def now() -> dict:
        fields = dict(
            line.split(":", 1)
            for line in Path("/proc/self/status").read_text().splitlines()
        )
        return {
            key: int(fields[key].split()[0]) * 1024
            for key in ("RssAnon", "VmRSS", "VmHWM")
        }

    def _sample(self):
        while True:
            now = self.now()
            for key in self.peaks:
                self.peaks[key] = max(self.peaks[key], now[key])
            time.sleep(0.01)

    def report(self, prefix: str) -> dict:
        now = self.now()
        anon = max(self.peaks["RssAnon"], now["RssAnon"])
        total = max(self.peaks["VmRSS"], now["VmHWM"])
        return {
            f"{prefix}_peak_rss_anon_gib": round(anon / GIB, 2),
            f"{prefix}_peak_rss_gib": round(total / GIB, 2),
        }


def write_checkpoint(directory: Path, config: OSUMConfig) -> None:
    """A random model of these sizes in from_pretrained's layout, one tensor at a time (bf16)."""
    with torch.device("meta"):
        skeleton = OSUM(config)
    entries = [
        (name, t.shape, torch.bfloat16, lambda t=t: _random(t))
        for name, t in skeleton.state_dict().items()
    ]
    total = sum(shape.numel() * 2 for _, shape, _, _ in entries)
    with Progress(total, f"writing {directory}", unit="B") as bar:
        save_weights(directory, entries, progress=bar)
    (directory / "config.json").write_text(json.dumps(config.to_dict(), indent=1))


def _random(like: torch.Tensor) -> torch.Tensor:
    """Weights of a trained model's scale: N(0, 1/fan_in) matrices, norms at 1, small LoRA updates."""
    if like.ndim == 1:
        return torch.ones(like.shape, dtype=torch.bfloat16)
    return (torch.randn(like.shape) * like.shape[-1] ** -0.5).bfloat16()


def step_bytes(model: OSUM) -> int:
    """Bytes of LLM weights read per decode step: every linear (int8 or float) and the norms."""
    total = 0
    for module in model.llm.modules():
        tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        if module is model.llm.embed_tokens:
            continue  # one row per token
        total += sum(t.numel() * t.element_size() for t in tensors if t is not None)
        if isinstance(module, Int8Linear) and module.packed is not None:
            total += module.in_features * module.out_features
    return total


def child(args) -> dict:
    """One mode, in this process: load, then time the parts and the whole request."""
    # the read bandwidth again, here, before loading: the best seen is the roofline (a busy moment reads low)
    bandwidth = max(args.read_gb_s * 1e9, measure_bandwidth("cpu")["read"])
    memory = Memory()
    dtype, quantize = MODES[args.child]
    start = time.perf_counter()
    try:
        model = load_for_inference(args.dir, None, "cpu", dtype, quantize=quantize)
    except PrecisionError as err:
        return {"fits": False, "why": str(err)}
    figures = {"fits": True, "load_s": round(time.perf_counter() - start, 1)}
    figures.update(memory.report("load"))
    figures["read_gb_per_s"] = round(bandwidth / 1e9, 2)
    per_step = step_bytes(model)
    roofline = bandwidth / per_step
    figures.update(
        step_gib=round(per_step / GIB, 2), read_roofline_tok_s=round(roofline, 2)
    )
    torch.manual_seed(0)
    samples = args.clip_seconds * 16000
    wav = torch.randn(samples) * 0.1
    mel = log_mel(wav)[None]  # (1, T, 80)
    mel_lens = torch.tensor([mel.shape[1]])
    with torch.inference_mode():
        model.embed_speech(mel[:, :100], mel_lens.clamp(max=100))  # warm-up
        start = time.perf_counter()
        speech, _ = model.embed_speech(mel, mel_lens)  # (1, S, H)
        figures["encoder_s"] = round(time.perf_counter() - start, 2)
        length = PROMPT_TOKENS + speech.shape[1] + 2
        embeds = torch.randn(1, length, model.config.llm.dim, dtype=speech.dtype) * 0.02
        mask = torch.ones(1, length, dtype=torch.long)
        for beams, label in [(1, "greedy"), (4, "beam4")]:

            def run(n, beams=beams):
                config = GenerationConfig(
                    max_new_tokens=n, num_beams=beams, eos_token_id=None
                )
                return generate(model.llm, embeds, mask, config)

            run(2)  # warm-up
            timed = measure(
                run, args.new_tokens, model.llm.norm, {"read": roofline}, "cpu"
            )
            figures[f"{label}_prefill_s"] = timed["prefill_s"]
            figures[f"{label}_decode_tok_s"] = timed["decode_tok_s"]
            figures[f"{label}_of_read_roofline"] = timed["read_roofline_fraction"]
            print(f"{args.child} {label}: {timed}", file=sys.stderr, flush=True)
        prompt = list(range(100, 100 + PROMPT_TOKENS))
        start = time.perf_counter()
        mel = log_mel(wav)[None]
        model.generate(
            mel,
            mel_lens,
            [prompt],
            num_beams=4,
            repetition_penalty=1.05,
            max_new_tokens=64,
            eos_token_id=None,
        )
        figures["request_s"] = round(time.perf_counter() - start, 1)
    figures.update(memory.report("run"))
    return figures


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(OSUM_PRESETS), default="osum")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/osum-7b"))
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument(
        "--new-tokens", type=int, default=8, help="decode tokens timed per run"
    )
    parser.add_argument("--clip-seconds", type=int, default=10)
    parser.add_argument("--child", choices=list(MODES), help=argparse.SUPPRESS)
    parser.add_argument("--read-gb-s", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return {}
    if not (args.dir / "config.json").is_file():
        write_checkpoint(args.dir, OSUM_PRESETS[args.preset])
    read = measure_bandwidth("cpu")["read"]
    print(
        f"read bandwidth {read / 1e9:.1f} GB/s, {torch.get_num_threads()} threads",
        flush=True,
    )
    result = {
        "bench": "cpu_7b",
        "preset": args.preset,
        "threads": torch.get_num_threads(),
        "read_gb_per_s": round(read / 1e9, 2),
        "checkpoint_gib": round(
            sum(f.stat().st_size for f in args.dir.glob("*.safetensors")) / GIB, 2
        ),
    }
    for mode in args.modes:
        command = [sys.executable, __file__, "--child", mode, "--dir", str(args.dir)]
        command += [
            "--read-gb-s",
            str(read / 1e9),
            "--new-tokens",
            str(args.new_tokens),
        ]
        command += ["--clip-seconds", str(args.clip_seconds)]
        print(f"{mode}: loading in its own process", flush=True)
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
        lines = done.stdout.strip().splitlines()
        figures = (
            json.loads(lines[-1])
            if done.returncode == 0 and lines
            else {"failed": done.returncode}
        )
        print(f"{mode}: {figures}", flush=True)
        result.update({f"{mode}_{key}": value for key, value in figures.items()})
    if "int8_greedy_decode_tok_s" in result and "bf16_greedy_decode_tok_s" in result:
        ratio = result["int8_greedy_decode_tok_s"] / result["bf16_greedy_decode_tok_s"]
        result["int8_over_bf16_greedy"] = round(ratio, 2)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
