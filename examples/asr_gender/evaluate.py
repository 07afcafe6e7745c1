"""Score a trained model on the dev and test lists (CER, WER, gender accuracy) and plot its learning curve.

python examples/asr_gender/evaluate.py --run runs/asr_gender --data data/asr_gender
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from osum_min.data.dataset import DataConfig  # noqa: E402
from osum_min.model.osum import OSUM  # noqa: E402
from osum_min.text.tokenizer import Tokenizer  # noqa: E402
from osum_min.training.dev import evaluate  # noqa: E402


def plot(log_path: Path, png: Path, title: str = "ASR + gender, espeak-ng") -> bool:
    """Training loss per logged step (and dev loss where evaluated); False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    dev = [
        (r["step"], r["eval"]["loss"])
        for r in records
        if "eval" in r and r["eval"]["loss"] is not None
    ]
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(*zip(*train), label="train loss")
    if dev:
        axes.plot(*zip(*dev), "o-", label="dev loss")
    axes.set(
        xlabel="step",
        ylabel="cross-entropy per label token",
        yscale="log",
        title=title,
    )
    axes.legend()
    figure.tight_layout()
    figure.savefig(png, dpi=120)
    return True


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="train.py's --out")
    parser.add_argument(
        "--data", type=Path, required=True, help="make_corpus.py's --out"
    )
    parser.add_argument("--max-batches", type=int, default=1000)
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    model = OSUM.from_pretrained(args.run / "final", device="cpu")
    tokenizer = Tokenizer.from_pretrained(args.run / "final")
    results = {
        split: evaluate(
            model,
            args.data / f"{split}.jsonl",
            tokenizer,
            DataConfig(max_frames_in_batch=8000),
            args.max_batches,
        )
        for split in ("dev", "test")
    }
    (args.run / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    if plot(args.run / "train_log.jsonl", args.run / "learning_curve.png"):
        print(f"wrote {args.run / 'learning_curve.png'}")
    return results


if __name__ == "__main__":
    main()
