"""Reproduce the evaluation tables.

    python eval.py run librispeech LibriSpeech/test-clean --out runs/ls-clean    # a public test set by name
    python eval.py run wenet test.jsonl --out runs/own                           # OSUM's own tasks, by task tag
    torchrun --nproc_per_node 8 eval.py run aishell2 AISHELL-2/iOS/test --out runs/a2-ios

`run` decodes the set through the same request path as infer.py (batches, long audio, every device), resumes
where an interrupted run stopped, and writes hyp.txt, ref.txt, records.jsonl, results.json and results.md in OUT.
Where each set comes from and which split the tables use: docs/evaluation.md.
"""
import argparse
import sys
from dataclasses import replace
from pathlib import Path

from osum_min import ranks
from osum_min.benchmarks import READERS, LayoutError, read_benchmark
from osum_min.generate import DEFAULT_DECODING
from osum_min.tasks import TASKS


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_run(commands):
    run = commands.add_parser("run", help="decode and score a public test set by name")
    run.add_argument("bench", choices=sorted(READERS))
    run.add_argument("data", type=Path, help="the set's folder (or list file) in its official layout")
    run.add_argument("--weights", default="weights/osum")
    run.add_argument("--out", type=Path, help="default runs/BENCH")
    run.add_argument("--limit", type=int, help="only the first N utterances")
    run.add_argument("--batch-size", type=int, default=8)
    run.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    run.add_argument("--beams", type=int, help="default: beam 4, repetition penalty 1.05 (infer.py's decoding)")
    run.add_argument("--max-new-tokens", type=int)
    for flag in ("task", "prompt", "protocol", "metric", "language"):
        run.add_argument(f"--{flag}", help="instead of the set's default")


def run(args) -> int:
    from osum_min.eval_run import decode, finish
    from osum_min.model import load_for_inference
    from osum_min.pipeline import Pipeline
    from osum_min.tokenizer import tokenizer_or_none

    if args.task is not None and args.task not in TASKS:
        raise LayoutError(f"--task {args.task}: choose one of {', '.join(TASKS)}")
    for flag in ("limit", "batch_size", "beams", "max_new_tokens"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise LayoutError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    subsets = read_benchmark(args.bench, args.data, task=args.task, prompt=args.prompt, protocol=args.protocol,
                             metric=args.metric, language=args.language)
    weights = Path(args.weights)
    tokenizer = tokenizer_or_none(weights) if (weights / "config.json").is_file() else None
    if tokenizer is None:
        raise LayoutError(f"{weights}/: no OSUM weights with a tokenizer (see `python convert.py --help`)")
    out = args.out or Path("runs") / args.bench
    out.mkdir(parents=True, exist_ok=True)
    device = ranks.start(args.device)
    try:
        model = load_for_inference(weights, tokenizer, device=device)
    except (OSError, ValueError, RuntimeError) as err:
        raise LayoutError(f"cannot load {weights}/: {' '.join(str(err).split())}") from None
    flags = {"num_beams": args.beams, "max_new_tokens": args.max_new_tokens}
    config = replace(DEFAULT_DECODING, eos_token_id=model.config.eod_id,
                     **{k: v for k, v in flags.items() if v is not None})
    decode(Pipeline(model, tokenizer, args.batch_size), subsets, out, config, limit=args.limit)
    rank = ranks.world()[0]
    ranks.finish()  # every rank's records are written
    if rank != 0:
        return 0
    results = finish(args.bench, subsets, out, args.limit)
    print((out / "results.md").read_text(encoding="utf-8"), end="")
    return 1 if any(row["failed"] for row in results["rows"]) else 0


def main(argv=None) -> int:
    parser = OneLineParser(prog="eval.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    add_run(commands)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except LayoutError as err:
        print(f"eval.py: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("eval.py: interrupted: the same command resumes where this run stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
