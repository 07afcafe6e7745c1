"""Evaluation commands.

    python eval.py score REF HYP [--protocol osum|qwen2-audio] [--metric wer|cer|acc|bleu] [--language LANG]
                                 [--bleu-tokenize 13a|zh] [--confusion-png PATH]

`score` scores a hypothesis file against a reference file, both in the original's `key text` form (a line with only a
key is an empty text), by the rules of the original tools (docs/evaluation.md, "Scoring"). It prints the tool's lines
as a table and, last, one JSON line: `value` (a percentage, or the BLEU score) and for wer/cer the counts N C S D I.
"""
import argparse
import json
import sys
from pathlib import Path

from osum_min.scoring import METRICS, PROTOCOLS, score_texts


class InputError(Exception):
    pass


def read_key_text(path: Path) -> dict[str, str]:
    """`key text` lines (UTF-8, a BOM tolerated): key -> text; blank lines skipped, a later key replaces an earlier."""
    try:
        content = Path(path).read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a `key text` file") from None
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 (byte {err.start})") from None
    except OSError as err:
        raise InputError(f"{path}: {err.strerror}") from None
    texts = {}
    for line in content.splitlines():
        parts = line.split(maxsplit=1)
        if parts:
            texts[parts[0]] = parts[1] if len(parts) > 1 else ""
    return texts


def score_lines(result: dict) -> list[str]:
    """The tool's summary as a readable table (compute-wer.py's lines, the accuracy and its confusion matrix, BLEU)."""
    if result["metric"] == "bleu":
        return [f"BLEU {result['value']:.2f} (sacrebleu, tokenize={result['tokenize']}, {result['utterances']} lines)"]
    if result["metric"] == "acc":
        lines = [f"accuracy {result['value']:.2f}% ({result['correct']}/{result['total']})"]
        if "labels" in result:
            width = max([len(label) for label in result["labels"]] + [9])
            corner = "ref \\ hyp"
            lines.append(f"{corner:<{width}} " + " ".join(f"{label:>{width}}" for label in result["labels"]))
            lines += [f"{label:<{width}} " + " ".join(f"{n:>{width}}" for n in row)
                      for label, row in zip(result["labels"], result["confusion"])]
        return lines
    rows = [("Overall", {"percent": result["value"], **{k: result[k] for k in "NCSDI"}})]
    rows += [(name, line) for name, line in result.items() if isinstance(line, dict)]
    return [f"{name:<9} {line['percent']:7.2f} %   N={line['N']} C={line['C']} S={line['S']} D={line['D']} "
            f"I={line['I']}" for name, line in rows]


def save_confusion_png(result: dict, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        print("eval.py: matplotlib is not installed: no confusion-matrix PNG", file=sys.stderr)
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
        refs, hyps = read_key_text(args.ref), read_key_text(args.hyp)
        result = score_texts(refs, hyps, args.protocol, args.metric, args.language, args.bleu_tokenize)
    except (InputError, ValueError) as err:
        print(f"eval.py: error: {err}", file=sys.stderr)
        return 2
    except ImportError as err:
        print(f"eval.py: error: {args.protocol} {args.metric} needs the [eval] extra (pip install -e '.[eval]'): "
              f"{err}", file=sys.stderr)
        return 2
    print("\n".join(score_lines(result)))
    if args.confusion_png and "confusion" in result:
        save_confusion_png(result, args.confusion_png)
    print(json.dumps(result, ensure_ascii=False))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    scoring = commands.add_parser("score", help="score a hypothesis file against a reference file")
    scoring.add_argument("ref", type=Path, help="reference, `key text` lines")
    scoring.add_argument("hyp", type=Path, help="hypothesis, `key text` lines")
    scoring.add_argument("--protocol", choices=PROTOCOLS, default="osum")
    scoring.add_argument("--metric", choices=METRICS, default="wer")
    scoring.add_argument("--language", help="qwen2-audio: en, zh, yue, fr... (picks the normaliser; bleu: zh -> zh)")
    scoring.add_argument("--bleu-tokenize", choices=("13a", "zh"))
    scoring.add_argument("--confusion-png", type=Path, help="acc (osum): also draw the confusion matrix here")
    scoring.set_defaults(run=score)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
