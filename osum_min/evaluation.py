"""Scoring a model during training: dev loss, and greedy decoding scored per task (WER, label accuracy, CER)."""
import torch

from . import data
from .model import OSUM
from .scoring import Scorer, edit_distance, normalise
from .tasks import TASKS, free_prompt_task, parse

TASKS_BY_TAG = {task.tag: task for task in TASKS.values()}


def character_error_rate(reference: str, hypothesis: str) -> tuple[int, int]:
    """(character edits, reference characters), spaces ignored: the CER the experiment reports for English."""
    reference, hypothesis = (list(text.replace(" ", "")) for text in (reference, hypothesis))
    return edit_distance(reference, hypothesis).errors, len(reference)


@torch.no_grad()
def evaluate(model: OSUM, dev_data, tokenizer, config, max_batches: int, max_new_tokens: int = 100,
             protocol: str = "osum") -> dict:
    """Dev loss, and greedy decoding scored per task: WER by `protocol`'s rules and label accuracy (scoring.Scorer),
    the figure `eval.py score` gives for the same texts, plus CER."""
    was_training = model.training
    model.eval()
    dataset = data.SpeechDataset(dev_data, tokenizer, config, train=False, eod_id=model.config.eod_id)
    scorers, char_counts, loss_sum, tokens, undecodable = {}, {}, 0.0, 0, 0
    for index, batch in enumerate(dataset):
        if index >= max_batches:
            break
        mel, mel_lens = batch["mel"].to(model.device), batch["mel_lens"]
        count = sum(len(row) for row in batch["labels"])
        loss_sum += model.loss(mel, mel_lens, batch["prompt_ids"], batch["labels"]).item() * count
        tokens += count
        outputs = model.generate(mel, mel_lens, batch["prompt_ids"], max_new_tokens=max_new_tokens)
        for tag, labels, output in zip(batch["tasks"], batch["labels"], outputs):
            task = TASKS_BY_TAG.get(tag) or free_prompt_task(tag)
            text = tokenizer.decode(output, placeholders=True)  # a young model's unknown ids score as wrong words
            undecodable += bool(tokenizer.unknown_ids(output))
            reference, hypothesis = tokenizer.decode(labels), parse(task, normalise(text))
            scorers.setdefault(task.name, Scorer(task, protocol)).add(reference, hypothesis)
            errors, length = character_error_rate(parse(task, normalise(reference)).transcript or "",
                                                  hypothesis.transcript or "")
            previous = char_counts.get(task.name, (0, 0))
            char_counts[task.name] = (previous[0] + errors, previous[1] + length)
    model.train(was_training)
    scores = {"loss": loss_sum / max(tokens, 1), "undecodable_outputs": undecodable}
    for name, scorer in scorers.items():
        errors, length = char_counts[name]
        scores[name] = {**scorer.summary(), "cer": round(100 * errors / max(length, 1), 2)}
    return scores
