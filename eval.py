"""Evaluation commands.

    python eval.py score REF HYP [--protocol osum|qwen2-audio] [--metric wer|cer|acc|bleu] [--language LANG]
                                 [--bleu-tokenize 13a|zh] [--confusion-png PATH]
    python eval.py run BENCH DATA_DIR [--weights DIR] [--out DIR] [--limit N] [--task T] [--prompt P] ...
    torchrun --nproc_per_node 8 eval.py run aishell2 AISHELL-2/iOS --out runs/a2-ios

`score` scores a hypothesis file against a reference file, both in the original's `key text` form (a line with only a
key is an empty text), by the rules of the original tools (docs/evaluation.md, "Scoring"). It prints the tool's lines
as a table and, last, one JSON line: `value` (a percentage, or the BLEU score) and for wer/cer the counts N C S D I.

`run` decodes a public test set by name, read in its publisher's layout, through the same request path as infer.py
(batches, long audio, every device), resumes where an interrupted run stopped, and writes hyp.txt, ref.txt,
records.jsonl, results.json and results.md in OUT (docs/evaluation.md, "Public test sets").
"""

import argparse
import importlib.util
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

from osum_min.inference import ranks
from osum_min.eval.benchmarks import READERS, LayoutError, read_benchmark
from osum_min.cli import (
    DTYPES,
    OneLineParser,
    add_precision_flags,
    device_problem,
    lowest_problem,
    weights_path,
)
from osum_min.files import MAX_LIST_BYTES, FileError, read_text, writable_folder
from osum_min.model.generate import DEFAULT_DECODING
from osum_min.eval.scoring import (
    METRICS,
    PROTOCOLS,
    NothingToScore,
    missing_warning,
    score_texts,
)
from osum_min.text.tasks import TASKS


class InputError(Exception):
    pass


def read_key_text(path: Path) -> dict[str, str]:
    """`key text` lines (UTF-8, a BOM tolerated, read through the input layer): key -> text.

    Blank lines are skipped; a key given twice is refused (which line is the utterance's?)."""
    try:
        content = read_text(path, "`key text` file", MAX_LIST_BYTES)
    except FileError as err:
        raise InputError(str(err)) from None
    texts, lines = {}, {}
    for number, line in enumerate(content.splitlines(), 1):
        parts = line.split(maxsplit=1)
        if not parts:
            continue
        if parts[0] in lines:
            raise InputError(
                f"{path}:{number}: key {parts[0]!r} is given twice (also line {lines[parts[0]]})"
            )
        lines[parts[0]] = number
        texts[parts[0]] = parts[1] if len(parts) > 1 else ""
    return texts


def score_lines(result: dict) -> list[str]:
    """The tool's summary as a readable table (compute-wer.py's lines, the accuracy and its confusion matrix, BLEU)."""
    if result["metric"] == "bleu":
        return [
            f"BLEU {result['value']:.2f} (sacrebleu, tokenize={result['tokenize']}, {result['utterances']} lines)"
        ]
    if result["metric"] == "acc":
        lines = [
            f"accuracy {result['value']:.2f}% ({result['correct']}/{result['total']})"
        ]
        if "labels" in result:
            width = max([len(label) for label in result["labels"]] + [9])
            corner = "ref \\ hyp"
            lines.append(
                f"{corner:<{width}} "
                + " ".join(f"{label:>{width}}" for label in result["labels"])
            )
            lines += [
                f"{label:<{width}} " + " ".join(f"{n:>{width}}" for n in row)
                for label, row in zip(result["labels"], result["confusion"])
            ]
        return lines
    rows = [
        ("Overall", {"percent": result["value"], **{k: result[k] for k in "NCSDI"}})
    ]
    rows += [(name, line) for name, line in result.items() if isinstance(line, dict)]
    return [
        f"{name:<9} {line['percent']:7.2f} %   N={line['N']} C={line['C']} S={line['S']} D={line['D']} "
        f"I={line['I']}"
        for name, line in rows
    ]


def save_confusion_png(result: dict, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        print(
            "eval.py: matplotlib is not installed: no confusion-matrix PNG",
            file=sys.stderr,
        )
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots()
    axes.imshow(result["confusion"], cmap="Blues")
    ticks = range(len(result["labels"]))
    axes.set_xticks(ticks, result["labels"], rotation=45, ha="right")
    axes.set_yticks(ticks, result["labels"])
    for i, row in enumerate(result["confusion"]):
        for j, count in enumerate(row):
            axes.text(j, i, count, ha="center", va="center")
    axes.set_xlabel("Predicted label")
    axes.set_ylabel("True label")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def score(args) -> int:
    try:
        if args.confusion_png is not None:
            writable_folder(
                args.confusion_png.parent, f"--confusion-png {args.confusion_png.name}"
            )
        refs, hyps = read_key_text(args.ref), read_key_text(args.hyp)
        result = score_texts(
            refs, hyps, args.protocol, args.metric, args.language, args.bleu_tokenize
        )
    except NothingToScore as err:
        print(f"eval.py: error: {args.ref} and {args.hyp}: {err}", file=sys.stderr)
        return 2
    except (InputError, ValueError) as err:
        print(f"eval.py: error: {err}", file=sys.stderr)
        return 2
    except ImportError as err:
        print(
            f"eval.py: error: {args.protocol} {args.metric} needs the [eval] extra (pip install -e '.[eval]'): "
            f"{err}",
            file=sys.stderr,
        )
        return 2
    if warning := missing_warning(result):
        print(f"eval.py: warning: {args.hyp}: {warning}", file=sys.stderr)
    print("\n".join(score_lines(result)))
    if args.confusion_png and "confusion" in result:
        try:
            save_confusion_png(result, args.confusion_png)
        except (OSError, ValueError) as err:  # the folder went since the check
            print(
                f"eval.py: error: --confusion-png {args.confusion_png}: {err}",
                file=sys.stderr,
            )
    print(json.dumps(result, ensure_ascii=False))
    return 0


def add_run(commands):
    run = commands.add_parser("run", help="decode and score a public test set by name")
    run.add_argument("bench", choices=sorted(READERS))
    run.add_argument(
        "data", type=Path, help="the set's folder (or list file) in its official layout"
    )
    run.add_argument(
        "--weights", default="weights/osum", help="a directory, or mini (osum-mini)"
    )
    run.add_argument("--out", type=Path, help="default runs/BENCH")
    run.add_argument("--limit", type=int, help="only the first N utterances")
    run.add_argument("--batch-size", type=int, default=8)
    run.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    add_precision_flags(run)
    run.add_argument(
        "--beams",
        type=int,
        help="default: beam 4, repetition penalty 1.05 (infer.py's decoding)",
    )
    run.add_argument("--max-new-tokens", type=int)
    for flag, choices in (
        ("task", None),
        ("prompt", None),
        ("protocol", PROTOCOLS),
        ("metric", METRICS),
        ("language", None),
    ):
        run.add_argument(
            f"--{flag}", choices=choices, help="instead of the set's default"
        )
    run.add_argument(
        "--word-times",
        type=Path,
        help="srwt: reference word times (a TextGrid, a folder of them, or "
        "JSONL) instead of the times written in the references",
    )
    run.set_defaults(run=run_command)


def run_benchmark(args) -> int:
    from osum_min.eval.run import claim, decode, finish, fingerprint
    from osum_min.model.osum import load_for_inference
    from osum_min.inference.pipeline import Pipeline
    from osum_min.text.tokenizer import tokenizer_or_none
    from osum_min.weights import weights_problem

    if args.task is not None and args.task not in TASKS:
        raise LayoutError(f"--task {args.task}: choose one of {', '.join(TASKS)}")
    if problem := (
        lowest_problem(
            args, dict.fromkeys(("limit", "batch_size", "beams", "max_new_tokens"), 1)
        )
        or device_problem(args.device)
    ):
        raise LayoutError(problem)
    subsets = read_benchmark(
        args.bench,
        args.data,
        task=args.task,
        prompt=args.prompt,
        protocol=args.protocol,
        metric=args.metric,
        language=args.language,
    )
    extras = [
        name
        for name in ("whisper", "zhconv", "sacrebleu")
        if importlib.util.find_spec(name) is None
    ]
    if extras and any(
        s.defaults.protocol == "qwen2-audio" or s.defaults.metric == "bleu"
        for s in subsets
    ):
        raise LayoutError(
            f"the qwen2-audio protocol and BLEU need the [eval] extra (pip install -e '.[eval]'): "
            f"{', '.join(extras)} missing"
        )
    word_times = None
    if args.word_times is not None:
        from osum_min.eval.word_timing import TimingError, read_word_times

        try:
            word_times = read_word_times(args.word_times)
        except TimingError as err:
            raise LayoutError(str(err)) from None
    try:
        weights = Path(weights_path(args.weights))
    except (ValueError, OSError) as err:
        raise LayoutError(str(err)) from None
    if problem := weights_problem(weights):
        raise LayoutError(problem)
    tokenizer = tokenizer_or_none(weights)
    if tokenizer is None:
        raise LayoutError(
            f"{weights}/: no OSUM weights with a tokenizer (see `python convert.py --help`)"
        )
    flags = {"num_beams": args.beams, "max_new_tokens": args.max_new_tokens}
    config = replace(
        DEFAULT_DECODING, **{k: v for k, v in flags.items() if v is not None}
    )
    out = writable_folder(args.out or Path("runs") / args.bench, "the run's results")
    rank = ranks.world()[0]
    decoding = {k: v for k, v in asdict(config).items() if k != "eos_token_id"}
    claim(out, fingerprint(args.bench, subsets, decoding, weights), write=rank == 0)
    device = ranks.start(args.device)
    try:
        model = load_for_inference(
            weights,
            tokenizer,
            device=device,
            dtype=DTYPES[args.dtype] if args.dtype else None,
            quantize=args.quantize,
        )
    except (OSError, ValueError, RuntimeError) as err:
        raise LayoutError(
            f"cannot load {weights}/: {' '.join(str(err).split())}"
        ) from None
    config = replace(config, eos_token_id=model.config.eod_id)
    decode(
        Pipeline(model, tokenizer, args.batch_size),
        subsets,
        out,
        config,
        limit=args.limit,
    )
    ranks.finish()  # every rank's records are written
    if rank != 0:
        return 0
    results = finish(args.bench, subsets, out, args.limit, word_times)
    for row in results["rows"]:
        if warning := missing_warning(row["score"]) or row["score"].get("problem"):
            print(f"eval.py: warning: {row['subset']}: {warning}", file=sys.stderr)
    print((out / "results.md").read_text(encoding="utf-8"), end="")
    return 1 if any(row["failed"] for row in results["rows"]) else 0


def run_command(args) -> int:
    try:
        return run_benchmark(args)
    except (LayoutError, FileError) as err:
        print(f"eval.py: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "eval.py: interrupted: the same command resumes where this run stopped",
            file=sys.stderr,
        )
        return 130


def main(argv=None) -> int:
    parser = OneLineParser(
        prog="eval.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    scoring = commands.add_parser(
        "score", help="score a hypothesis file against a reference file"
    )
    scoring.add_argument("ref", type=Path, help="reference, `key text` lines")
    scoring.add_argument("hyp", type=Path, help="hypothesis, `key text` lines")
    scoring.add_argument("--protocol", choices=PROTOCOLS, default="osum")
    scoring.add_argument("--metric", choices=METRICS, default="wer")
    scoring.add_argument(
        "--language",
        help="qwen2-audio: en, zh, yue, fr... (picks the normaliser; bleu: zh -> zh)",
    )
    scoring.add_argument("--bleu-tokenize", choices=("13a", "zh"))
    scoring.add_argument(
        "--confusion-png",
        type=Path,
        help="acc (osum): also draw the confusion matrix here",
    )
    scoring.set_defaults(run=score)
    add_run(commands)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
