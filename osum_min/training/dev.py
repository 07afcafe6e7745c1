"""Scoring a model during training: dev loss, and greedy decoding scored per task (WER, label accuracy, CER)."""

import math

import torch

from ..data import dataset as data
from ..model.osum import OSUM
from ..eval.scoring import Scorer, edit_distance, normalise
from ..text.tasks import TASKS_BY_TAG, parse


def character_error_rate(reference: str, hypothesis: str) -> tuple[int, int]:
    """(character edits, reference characters), spaces ignored: the CER the experiment reports for English."""
    reference, hypothesis = (
        list(text.replace(" ", "")) for text in (reference, hypothesis)
    )
    return edit_distance(reference, hypothesis).errors, len(reference)


@torch.no_grad()
def evaluate(
    model: OSUM,
    dev_data,
    tokenizer,
    config,
    max_batches: int,
    max_new_tokens: int = 100,
    protocol: str = "osum",
) -> dict:
    """Dev loss, and greedy decoding scored per task: WER by `protocol`'s rules and label accuracy (scoring.Scorer),
    the figure `eval.py score` gives for the same texts, plus CER. The loss is over the items whose loss is finite,
    `dev_items` of them; None when there is none (not 0.0: a perfect score from nothing)."""
    was_training = model.training
    model.eval()
    dataset = data.SpeechDataset(
        dev_data, tokenizer, config, train=False, eod_id=model.config.eod_id
    )
    scorers, char_counts, loss_sum, tokens, undecodable, items = {}, {}, 0.0, 0, 0, 0
    for index, batch in enumerate(dataset):
        if index >= max_batches:
            break
        mel, mel_lens = batch["mel"].to(model.device), batch["mel_lens"]
        item_losses = model(
            mel, mel_lens, batch["prompt_ids"], batch["labels"]
        ).item_losses.tolist()
        scored = [
            (loss, len(labels))
            for loss, labels in zip(item_losses, batch["labels"])
            if math.isfinite(loss)
        ]
        loss_sum, tokens, items = (
            loss_sum + sum(loss for loss, _ in scored),
            tokens + sum(count for _, count in scored),
            items + len(scored),
        )
        outputs = model.generate(
            mel, mel_lens, batch["prompt_ids"], max_new_tokens=max_new_tokens
        )
        for tag, labels, output in zip(batch["tasks"], batch["labels"], outputs):
            task = TASKS_BY_TAG[tag]  # the dataset takes no other tag
            # a young model's unknown ids score as wrong words
            text = tokenizer.decode(output, placeholders=True)
            undecodable += bool(tokenizer.unknown_ids(output))
            reference, hypothesis = (
                tokenizer.decode(labels),
                parse(task, normalise(text)),
            )
            scorers.setdefault(task.name, Scorer(task, protocol)).add(
                reference, hypothesis
            )
            errors, length = character_error_rate(
                parse(task, normalise(reference)).transcript or "",
                hypothesis.transcript or "",
            )
            previous = char_counts.get(task.name, (0, 0))
            char_counts[task.name] = (previous[0] + errors, previous[1] + length)
    model.train(was_training)
    scores = {
        "loss": loss_sum / tokens if tokens else None,
        "dev_items": items,
        "undecodable_outputs": undecodable,
    }
    for name, scorer in scorers.items():
        errors, length = char_counts[name]
        scores[name] = {
            **scorer.summary(),
            "cer": round(100 * errors / max(length, 1), 2),
        }
    return scores
