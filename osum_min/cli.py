"""What the root commands share on the command line: a bad flag is one line with exit code 2, like every other
usage error, and devices and numbers are checked before anything loads (a model takes minutes to load; a --device
meta or a --seed of 1e23 should not wait for it, nor end in a traceback)."""

import argparse

import torch

from .config_check import SEEDS

# what the model is loaded and decoded on; torch names many more
DEVICE_TYPES = (
    "cpu",
    "cuda",
    "mps",
)
DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def weights_path(value: str) -> str:
    """--weights: a directory, or `mini` for weights/osum-mini (assembled from the [mini] packages,
    docs/mini.md); a missing part raises convert.mini.MissingPart, one line."""
    if value != "mini":
        return value
    from .convert.mini import assembled

    return assembled()


def add_precision_flags(parser: argparse.ArgumentParser) -> None:
    """--dtype and --quantize: overrides of the precision chosen for the memory there is (precision.py)."""
    parser.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        help="default: the best that fits (float32, else bf16, else int8; bf16 first on GPU)",
    )
    parser.add_argument(
        "--quantize",
        choices=["int8"],
        help="int8: LLM linears stored as int8 (a quarter of fp32, half of bf16; fastest on CPU)",
    )


def device_problem(name: str | None) -> str | None:
    """What is wrong with `--device name` on this machine (None: nothing, or no device asked for)."""
    if name is None:
        return None
    try:
        device = torch.device(name)
    except RuntimeError:
        return f"--device {name}: not a torch device (cpu, cuda or cuda:N)"
    if device.type not in DEVICE_TYPES:
        return f"--device {name}: the model runs on {', '.join(DEVICE_TYPES)} only"
    if device.type == "cuda" and not torch.cuda.is_available():
        return f"--device {name}: this torch ({torch.__version__}) sees no CUDA device; use --device cpu"
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        return (
            f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        return f"--device {name}: this torch sees no Apple GPU; use --device cpu"
    return None


def lowest_problem(args: argparse.Namespace, lowest: dict[str, int]) -> str | None:
    """The first whole-number flag below its lowest value (a flag left unset passes)."""
    for name, least in lowest.items():
        if (value := getattr(args, name)) is not None and value < least:
            return f"--{name.replace('_', '-')} must be at least {least}, got {value}"
    return None


def seed_problem(seed: int | None) -> str | None:
    if seed is not None and seed not in SEEDS:
        return f"--seed must be a whole number from {SEEDS.start} to {SEEDS.stop - 1} (torch's range), got {seed}"
    return None
