"""Convert an OSUM checkpoint (the released infer.pt, or any the original code saves) into our format.

    python convert.py CKPT [--config OSUM_CONFIG.json] [--tokenizer DIR] [--dtype bf16|fp32|keep] --out DIR
    python convert.py --download [--hub-url URL]          # fetch the released model and convert into weights/osum
    python convert.py --to-original DIR --out infer.pt    # export ours back to the original's key layout
    python convert.py --mini [--no-delta] [--out DIR]     # osum-mini from the [mini] packages (docs/mini.md)

The key table and the config reading live in osum_min/convert/original.py; this is the command around them. A bad
checkpoint, config or tokenizer is refused in one line (exit code 2). --out is replaced as a whole: an interrupted
conversion leaves the old model or the new one, never a mix. LoRA stays separate in the file; loading merges it.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from osum_min.files import check_file
from osum_min.model.osum import OSUMConfig
from osum_min.convert.original import (
    RELEASED_CONFIG,
    ConfigMismatch,
    convert_entries,
    load_checkpoint,
    read_original_config,
)
from osum_min.convert.original import config_from_original, map_key  # noqa: F401  (tests call them as convert.*)
from osum_min.progress import Progress
from osum_min.text.tokenizer import (
    Tokenizer,
    TokenizerError,
    check_fits,
    eod_outside_vocabulary,
)
from osum_min.weights import WeightsError, replacing_directory, save_weights


def convert(
    checkpoint: Path,
    out: Path,
    config: OSUMConfig,
    dtype: torch.dtype | None,
    tokenizer: Tokenizer | None = None,
    config_path: Path | None = None,
) -> OSUMConfig:
    """checkpoint -> out (config.json, safetensors, tokenizer.tiktoken), swapped in as one directory at the end."""
    source = load_checkpoint(checkpoint)
    try:
        entries = convert_entries(source, config, dtype)
    except WeightsError as err:
        config_hint = isinstance(err, ConfigMismatch) and config_path is not None
        hint = (
            f"; is {config_path} this checkpoint's config? (--config)"
            if config_hint
            else ""
        )
        raise WeightsError(f"{checkpoint}: {err}{hint}") from None
    total = sum(shape.numel() * dt.itemsize for _, shape, dt, _ in entries)
    with (
        replacing_directory(out) as new,
        Progress(total, "converting", unit="B") as bar,
    ):
        save_weights(new, entries, progress=bar)
        (new / "config.json").write_text(json.dumps(config.to_dict(), indent=1))
        if tokenizer is not None:
            tokenizer.save(new)
    return config


def vocabulary_problems(
    config: OSUMConfig, config_path, tokenizer: Tokenizer | None, tokenizer_path
) -> list[str]:
    """A tokenizer larger than the model's vocabulary, an eod_id outside it: each problem as one line."""
    problems = []
    if tokenizer is not None:
        try:
            check_fits(tokenizer, config.llm.vocab_size, tokenizer_path)
        except TokenizerError as err:
            problems.append(str(err))
    eod_problem = eod_outside_vocabulary(
        config.eod_id, config.llm.vocab_size, config_path
    )
    return problems + ([eod_problem] if eod_problem else [])


DTYPES = {
    "bf16": torch.bfloat16,
    "fp32": torch.float32,
    "fp16": torch.float16,
    "keep": None,
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "checkpoint",
        nargs="?",
        type=Path,
        help="the original's infer.pt (a plain state dict)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=RELEASED_CONFIG,
        help="model config in the original's vocabulary (default: the released model's)",
    )
    parser.add_argument(
        "--tokenizer",
        type=Path,
        help="a Qwen2 tokenizer directory to convert alongside",
    )
    parser.add_argument("--dtype", choices=DTYPES, default="keep")
    parser.add_argument(
        "--out", type=Path, help="output directory (default weights/osum)"
    )
    parser.add_argument(
        "--download",
        action="store_true",
        help="fetch the released model first (needs internet)",
    )
    parser.add_argument(
        "--hub-url",
        help="hub base URL (default $OSUM_HUB_URL or https://huggingface.co)",
    )
    parser.add_argument(
        "--download-dir",
        type=Path,
        default=Path("weights/download"),
        help="where --download keeps the original files (partial files resume from here)",
    )
    parser.add_argument(
        "--to-original",
        type=Path,
        metavar="DIR",
        help="export our DIR to the original's layout",
    )
    parser.add_argument(
        "--mini", action="store_true", help="assemble osum-mini from installed packages"
    )
    parser.add_argument(
        "--no-delta",
        action="store_true",
        help="--mini without weights/mini: fresh to train",
    )
    args = parser.parse_args(argv)
    try:
        if args.mini:
            from osum_min.convert.mini import DELTA_DIR, OUT_DIR, assemble

            assemble(args.out or OUT_DIR, delta=None if args.no_delta else DELTA_DIR)
            print(f"wrote {args.out or OUT_DIR}")
            return 0
        if args.to_original:
            from osum_min.convert.export import export_original

            written = export_original(args.to_original, args.out or Path("infer.pt"))
            print(
                f"wrote {written} and {written.with_name(written.stem + '_config.json')}"
            )
            return 0
        out = args.out or Path("weights/osum")
        explicit_tokenizer = args.tokenizer is not None
        if args.download:
            from osum_min.convert.hub import fetch_release

            args.checkpoint, args.tokenizer = fetch_release(
                args.download_dir, base_url=args.hub_url
            )
        if args.checkpoint is None:
            parser.error("give a checkpoint, --download or --to-original")
        # a folder, a FIFO, a link loop: said as such
        check_file(args.checkpoint, "checkpoint file")
        config = read_original_config(args.config)
        tokenizer = (
            Tokenizer.from_pretrained(args.tokenizer) if args.tokenizer else None
        )
        problems = vocabulary_problems(config, args.config, tokenizer, args.tokenizer)
        # a tokenizer the user chose for this model must fit it
        if problems and explicit_tokenizer:
            raise WeightsError(problems[0])
        convert(
            args.checkpoint,
            out,
            config,
            DTYPES[args.dtype],
            tokenizer,
            config_path=args.config,
        )
    except (ValueError, OSError) as err:
        print(f"convert.py: error: {err}", file=sys.stderr)
        return 2
    # --download's tokenizer with another --config; a model of ids, like the fixture
    for problem in problems:
        print(f"convert.py: warning: {problem}", file=sys.stderr)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
