"""osum-mini's first stage: the adaptor learns to speak in the LLM's token embeddings (CTC), before train.py.

A fresh adaptor's outputs sit 35x above the token embeddings' scale and mean nothing to the LLM. Trained
through the LLM from there (the first recipe run, docs/mini.md), they grew into one constant vector the
LLM ignored. Here the frozen encoder and the adaptor train alone with CTC, each speech embedding scored
against the LLM's own (frozen) token embeddings by cosine: a frame that hears " pencil" points where
" pencil"'s embedding points. No LLM runs, so a step costs a few percent of a train.py step. The outputs
are then scaled to the token embeddings' mean norm, and the model is written as train.py's --init.

    python examples/mini/align.py RUN/init DATA/train_asr.jsonl DATA/dev_asr.jsonl RUN/aligned
"""

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from osum_min.data.dataset import DataConfig, SpeechDataset  # noqa: E402
from osum_min.eval.scoring import edit_distance  # noqa: E402
from osum_min.model.osum import OSUM  # noqa: E402
from osum_min.progress import Progress, status  # noqa: E402
from osum_min.text.tokenizer import Tokenizer  # noqa: E402

TASK = "<TRANSCRIBE>"  # the plain transcripts: CTC's targets
NO_ITEMS = (
    f"no {TASK} items with a transcript (make_corpus.py's *_asr.jsonl lists have them)"
)


class Vocabulary:
    """The token ids the transcripts use, in the order first seen; column 0 is CTC's blank."""

    def __init__(self):
        self.ids: list[int] = []
        self.column: dict[int, int] = {}

    def targets(self, label: list[int]) -> list[int]:
        for token in label:
            if token not in self.column:
                self.column[token] = len(self.ids) + 1
                self.ids.append(token)
        return [self.column[token] for token in label]


class CTCHead(torch.nn.Module):
    """Cosine between each speech embedding and [a learned blank; the frozen token embeddings], sharpened
    by a learned temperature, as log-probabilities for CTC."""

    def __init__(self, embeddings: torch.Tensor):
        super().__init__()
        self.embeddings = embeddings  # (V, H), frozen: the LLM's
        self.blank = torch.nn.Parameter(torch.randn(embeddings.shape[1]))
        self.log_temperature = torch.nn.Parameter(torch.tensor(math.log(10.0)))

    def forward(self, speech: torch.Tensor, ids: list[int]) -> torch.Tensor:
        table = torch.cat([self.blank[None], self.embeddings[ids]])  # (1 + V', H)
        cosine = F.normalize(speech, dim=-1) @ F.normalize(table, dim=-1).T
        logits = cosine * self.log_temperature.exp()  # (B, S, 1 + V')
        return logits.log_softmax(-1)


def plain_items(batch: dict, eod_id: int) -> list[int]:
    """Rows of a batch that are plain transcripts, with a label besides the eod."""
    return [
        row
        for row, (task, label) in enumerate(zip(batch["tasks"], batch["labels"]))
        if task == TASK and len(label) > 1 and label[-1] == eod_id
    ]


def plain_speech(model, batch: dict, eod_id: int):
    """The plain-transcript rows of a batch and their speech embeddings (B, S, H), lengths (B,);
    the frozen encoder builds no graph (its weights need no gradient)."""
    rows = plain_items(batch, eod_id)
    if not rows:
        return rows, None, None
    mel, mel_lens = batch["mel"][rows], batch["mel_lens"][rows]
    return rows, *model.embed_speech(mel, mel_lens, original_mask_rule=False)


def ctc_loss(model, head, vocab, batch, eod_id):
    rows, speech, lengths = plain_speech(model, batch, eod_id)
    if not rows:
        return None
    targets = [vocab.targets(batch["labels"][row][:-1]) for row in rows]
    log_probs = head(speech, vocab.ids).transpose(0, 1)  # (S, B, 1 + V')
    return F.ctc_loss(
        log_probs,
        torch.tensor([t for target in targets for t in target]),
        lengths,
        torch.tensor([len(target) for target in targets]),
        zero_infinity=True,
    )


def greedy(log_probs: torch.Tensor, length: int, vocab: Vocabulary) -> list[int]:
    """Best column per frame, repeats merged, blanks dropped -> token ids."""
    best = log_probs[:length].argmax(-1).tolist()
    kept = [c for i, c in enumerate(best) if c and (i == 0 or c != best[i - 1])]
    return [vocab.ids[c - 1] for c in kept]


@torch.no_grad()
def word_error_rate(model, head, vocab, dataset, tokenizer, eod_id) -> float:
    """Greedy CTC decoding's WER on the dev list: what the adaptor alone hears."""
    errors = words = 0
    for batch in dataset:
        rows, speech, lengths = plain_speech(model, batch, eod_id)
        if not rows:
            continue
        log_probs = head(speech, vocab.ids)  # (B, S, 1 + V')
        for i, row in enumerate(rows):
            ref = tokenizer.decode(batch["labels"][row][:-1]).split()
            hyp = tokenizer.decode(greedy(log_probs[i], int(lengths[i]), vocab))
            errors += edit_distance(ref, hyp.split()).errors
            words += len(ref)
    if not words:
        raise SystemExit(f"{dataset.sources[0].name}: {NO_ITEMS}")
    return 100.0 * errors / words


@torch.no_grad()
def match_text_scale(model, vocab, dataset, eod_id) -> float:
    """Set the adaptor's output_scale so speech rows have the mean norm of the transcripts'
    token embeddings, the scale the LLM reads; CTC's cosine left it free. A constant, not the
    projection's weights: AdamW moves a weight by about lr a step, whatever its size."""
    norms = []
    for batch in dataset:
        _, speech, lengths = plain_speech(model, batch, eod_id)
        for row, length in zip(speech if speech is not None else [], lengths):
            norms.append(row[:length].norm(dim=-1).mean())
    text = model.llm.embed_tokens.weight[vocab.ids].norm(dim=-1).mean()
    scale = float(text / torch.stack(norms).mean()) * model.adaptor.config.output_scale
    config = replace(model.config.adaptor, output_scale=scale)
    model.config.adaptor = model.adaptor.config = config
    return scale


def train(model, head, vocab, dataset, args, eod_id) -> list[dict]:
    """AdamW on the adaptor and the head: linear warmup over a tenth of the steps, cosine to zero."""
    params = [*model.adaptor.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    warmup = max(1, args.steps // 10)

    def lr_factor(step):
        if step < warmup:
            return (step + 1) / warmup
        done = (step - warmup) / max(1, args.steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * done))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    log, step, epoch, recent = [], 0, 0, []
    with Progress(args.steps, "aligning the adaptor", unit="step") as bar:
        while step < args.steps:
            dataset.set_epoch(epoch)
            if epoch and step == 0:
                raise SystemExit(f"{args.train_data}: {NO_ITEMS}")
            for batch in dataset:
                loss = ctc_loss(model, head, vocab, batch, eod_id)
                if loss is None:
                    continue
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 5.0)
                optimizer.step()
                schedule.step()
                step += 1
                recent = [*recent[-19:], loss.item()]
                bar.desc = (
                    f"aligning the adaptor (ctc loss {sum(recent) / len(recent):.3f})"
                )
                bar.update(1)
                if step % 20 == 0 or step == args.steps:
                    log.append({"step": step, "ctc_loss": sum(recent) / len(recent)})
                if step == args.steps:
                    break
            epoch += 1
    return log


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("init", type=Path, help="from convert.py --mini --no-delta")
    parser.add_argument("train_data", type=Path)
    parser.add_argument("dev_data", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-frames", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")

    torch.manual_seed(args.seed)
    status(f"loading {args.init}")
    model = OSUM.from_pretrained(args.init, device="cpu", for_training=True)
    model.requires_grad_(False)
    model.adaptor.requires_grad_(True).train()
    tokenizer = Tokenizer.from_pretrained(args.init)
    eod_id = model.config.eod_id
    head = CTCHead(model.llm.embed_tokens.weight.detach())
    vocab = Vocabulary()
    data = DataConfig(max_frames_in_batch=args.batch_frames, sort_buffer=32)
    train_set = SpeechDataset(
        args.train_data, tokenizer, data, seed=args.seed, eod_id=eod_id
    )
    dev = SpeechDataset(args.dev_data, tokenizer, data, train=False, eod_id=eod_id)
    start = time.monotonic()
    log = train(model, head, vocab, train_set, args, eod_id)
    model.adaptor.eval()
    wer = word_error_rate(model, head, vocab, dev, tokenizer, eod_id)
    scale = match_text_scale(model, vocab, dev, eod_id)
    model.save_pretrained(args.out)
    tokenizer.save(args.out)
    figures = {
        "steps": args.steps,
        "seconds": round(time.monotonic() - start, 1),
        "final_ctc_loss": round(log[-1]["ctc_loss"], 4),
        "dev_ctc_greedy_wer": round(wer, 2),
        "output_scale": round(scale, 5),
        "vocabulary": len(vocab.ids),
    }
    (args.out / "align_log.jsonl").write_text(
        "".join(json.dumps(line) + "\n" for line in [*log, figures])
    )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, OSError) as err:  # a missing directory, an unreadable list
        sys.exit(f"align.py: error: {err}")
