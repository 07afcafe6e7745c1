"""The pieces of train.py that are not the loop: building the model, freezing, the schedule and checkpoints.

Checkpoints hold only what training changes (trainable tensors, optimizer, scheduler, data position, RNG states,
step); the frozen weights come from the model's init directory, so a checkpoint of a 7B run stays small.
"""
import json
import os
import random
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from . import data
from .encoder import EncoderConfig, whisper_state_dict
from .model import OSUM, OSUM_PRESETS
from .qwen2 import load_hf_checkpoint
from .scoring import Scorer, edit_distance, normalise
from .tasks import TASKS, free_prompt_task, parse
from .tokenizer import EOD_ID


class TrainingError(ValueError):
    """A training setup that cannot work (bad option, missing checkpoint, tokenizer/model mismatch): one line."""


# The original's `fire_module` options -> which of our parameters train. The base LLM stays frozen, as peft
# freezes it; "llm" means its LoRA adapters (or, for a model built without LoRA, the whole LLM). "all" is ours:
# every weight, for a model trained from scratch, whose random LLM is worth nothing frozen.
MODULE_PATTERNS = {
    "link": r"adaptor\..*|speech_bos_eos",
    "encoder": r"encoder\..*",
    "lora": r"llm\..*\.lora_[AB]",
    "llm_all": r"llm\..*",
    "everything": r".*",
}
FIRE_MODULES = {
    "link": ("link",),
    "encoder": ("encoder",),
    "llm": ("lora",),
    "link_and_encoder": ("link", "encoder"),
    "link_and_encoder_and_lora": ("link", "encoder", "lora"),
    "link_and_lora": ("link", "lora"),  # adaptor + LoRA on pretrained parts (the GPU recipe)
    "link_and_llm": ("link", "llm_all"),  # adaptor + the whole LLM, encoder frozen (an LLM trained from scratch)
    "all": ("everything",),
}


def freeze_for(model: OSUM, fire_module: str) -> list[str]:
    """Set requires_grad by the option; returns the trainable parameter names."""
    if fire_module not in FIRE_MODULES:
        raise TrainingError(f"--fire-module {fire_module!r}: choose one of {', '.join(FIRE_MODULES)}")
    patterns = [MODULE_PATTERNS[part] for part in FIRE_MODULES[fire_module]]
    if fire_module == "llm" and model.config.llm.lora_rank == 0:
        patterns = [r"llm\..*"]
    trainable = re.compile("|".join(patterns))
    names = []
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(bool(trainable.fullmatch(name)))
        if parameter.requires_grad:
            names.append(name)
    return names


def trainable_table(model: nn.Module) -> str:
    """Trainable / total parameter counts per top-level module (the LLM split into base and LoRA)."""
    rows = {}
    for name, parameter in model.named_parameters():
        group = name.split(".")[0] + (" (lora)" if ".lora_" in name else "")
        trained, total = rows.get(group, (0, 0))
        rows[group] = (trained + parameter.numel() * parameter.requires_grad, total + parameter.numel())
    lines = [f"{'module':<16}{'trainable':>14}{'total':>14}"]
    lines += [f"{group:<16}{trained:>14,}{total:>14,}" for group, (trained, total) in rows.items()]
    trained, total = (sum(column) for column in zip(*rows.values()))
    return "\n".join(lines + [f"{'all':<16}{trained:>14,}{total:>14,}"])


def warmup_lr(warmup_steps: int):
    """The original's WarmupLR as a LambdaLR factor: linear ramp to the base lr at warmup, then 1/sqrt(step).

    lr(step) = lr * warmup^0.5 * min(step^-0.5, step * warmup^-1.5), with step counted from 1 as wenet does.
    """
    def factor(step: int) -> float:
        step += 1
        if warmup_steps == 0:
            return step ** -0.5
        return warmup_steps ** 0.5 * min(step ** -0.5, step * warmup_steps ** -1.5)
    return factor


def build_model(preset: str, encoder_init: str | None = None, llm_init: str | None = None,
                vocab_size: int | None = None, eod_id: int | None = None) -> OSUM:
    """A new OSUM at a preset size, with its encoder and/or LLM taken from pretrained checkpoints if given.

    The encoder's and LLM's sizes follow their checkpoints; the adaptor is resized to join them. eod_id: the
    tokenizer's end-of-document id, which ends every label and stops decoding.
    """
    if preset not in OSUM_PRESETS:
        raise TrainingError(f"--preset {preset!r}: choose one of {', '.join(OSUM_PRESETS)}")
    config = OSUM_PRESETS[preset]
    encoder_state = llm = None
    if encoder_init:
        checkpoint = torch.load(encoder_init, map_location="cpu", weights_only=True)
        if "dims" not in checkpoint or "model_state_dict" not in checkpoint:
            raise TrainingError(f"{encoder_init}: not an openai-whisper checkpoint (no dims/model_state_dict)")
        dims = checkpoint["dims"]
        config = replace(config, encoder=EncoderConfig(n_mels=dims["n_mels"], dim=dims["n_audio_state"],
                                                       heads=dims["n_audio_head"], ff_dim=4 * dims["n_audio_state"],
                                                       layers=dims["n_audio_layer"]))
        encoder_state = whisper_state_dict(checkpoint["model_state_dict"])
    if llm_init:
        llm = load_hf_checkpoint(llm_init, dtype=torch.float32)  # the base weights, strictly; adapters are new
        lora = config.llm
        config = replace(config, eod_id=EOD_ID, llm=replace(llm.config, lora_rank=lora.lora_rank,
                                                            lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout))
    elif vocab_size is not None:
        config = replace(config, llm=replace(config.llm, vocab_size=vocab_size))
    if eod_id is not None:
        config = replace(config, eod_id=eod_id)
    config = replace(config, adaptor=replace(config.adaptor, dim=config.encoder.dim,
                                             llm_dim=config.llm.hidden_size))
    model = OSUM(config)
    if encoder_state is not None:
        model.encoder.load_state_dict(encoder_state)
    if llm is not None:
        missing, unexpected = model.llm.load_state_dict(llm.state_dict(), strict=False)
        if unexpected or any(".lora_" not in name for name in missing):
            raise TrainingError(f"{llm_init}: does not fit the LLM config (missing {missing[:3]}, "
                                f"unexpected {unexpected[:3]})")
    return model


class TrainingForward(nn.Module):
    """`forward` = `model.loss`, so DistributedDataParallel (which hooks `forward`) can wrap the model."""

    def __init__(self, model: OSUM):
        super().__init__()
        self.model = model

    def forward(self, mel, mel_lens, prompt_ids, labels):
        return self.model.loss(mel, mel_lens, prompt_ids, labels)


def shard_model(wrapper: TrainingForward, mesh) -> None:
    """FSDP2: each encoder block and LLM layer is a unit of its own, gathered only while it runs; the rest (embeddings,
    lm_head, adaptor, norms) is the root unit, gathered for the whole forward."""
    for block in [*wrapper.model.encoder.blocks, *wrapper.model.llm.layers]:
        fully_shard(block, mesh=mesh)
    fully_shard(wrapper, mesh=mesh)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind an FSDP shard (a collective: every rank must call it); a plain tensor as it is."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


class PerItemLoss:
    """Reads the label-token logits `model.loss` sends through lm_head and returns each item's summed loss.

    `model.loss` gives one batch mean; per-task logging needs per-item sums, which this recomputes (no grad) from
    the same logits: lm_head sees exactly the label positions, in row order.
    """

    def __init__(self, model: OSUM):
        self.logits = None
        model.llm.lm_head.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output):
        self.logits = output.detach()

    @torch.no_grad()
    def sums(self, labels: list[list[int]]) -> list[float]:
        targets = torch.as_tensor([token for row in labels for token in row], device=self.logits.device)
        losses = F.cross_entropy(self.logits.float(), targets, reduction="none")  # (N_label_tokens,)
        return [chunk.sum().item() for chunk in losses.split([len(row) for row in labels])]


TASKS_BY_TAG = {task.tag: task for task in TASKS.values()}


def character_error_rate(reference: str, hypothesis: str) -> tuple[int, int]:
    """(character edits, reference characters), spaces ignored: the CER the experiment reports for English."""
    reference, hypothesis = (list(text.replace(" ", "")) for text in (reference, hypothesis))
    return edit_distance(reference, hypothesis).errors, len(reference)


@torch.no_grad()
def evaluate(model: OSUM, dev_data, tokenizer, config, max_batches: int, max_new_tokens: int = 100) -> dict:
    """Dev loss, and greedy decoding scored per task: WER and label accuracy (scoring.Scorer) plus CER."""
    was_training = model.training
    model.eval()
    dataset = data.SpeechDataset(dev_data, tokenizer, config, train=False, eod_id=model.config.eod_id)
    scorers, char_counts, loss_sum, tokens = {}, {}, 0.0, 0
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
            hypothesis = parse(task, normalise(tokenizer.decode(output, placeholders=True)))  # never stops a run
            reference = tokenizer.decode(labels)
            scorers.setdefault(task.name, Scorer(task)).add(reference, hypothesis)
            errors, length = character_error_rate(parse(task, normalise(reference)).transcript or "",
                                                  hypothesis.transcript or "")
            previous = char_counts.get(task.name, (0, 0))
            char_counts[task.name] = (previous[0] + errors, previous[1] + length)
    model.train(was_training)
    scores = {"loss": loss_sum / max(tokens, 1)}
    for name, scorer in scorers.items():
        errors, length = char_counts[name]
        scores[name] = {**scorer.summary(), "cer": round(100 * errors / max(length, 1), 2)}
    return scores


def rng_states() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


CHECKPOINT_NAME = re.compile(r"step_(\d+)\.pt")


def save_checkpoint(out: Path, step: int, state: dict, keep_last: int) -> Path:
    """Write out/step_N.pt atomically (temp file, then rename) and delete all but the newest `keep_last`."""
    path = out / f"step_{step:08d}.pt"
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    for old in checkpoints(out)[:-keep_last] if keep_last > 0 else []:
        old.unlink()
    return path


def checkpoints(out: Path) -> list[Path]:
    """Finished checkpoints in step order (a .tmp left by a crash is not one)."""
    return sorted(path for path in Path(out).glob("step_*.pt") if CHECKPOINT_NAME.fullmatch(path.name))


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise TrainingError(f"{path}: not a readable training checkpoint ({str(err).splitlines()[0][:120]})") \
            from None


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
