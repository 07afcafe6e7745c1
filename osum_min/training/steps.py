"""The pieces of train.py that are not the loop: the model's setup for training (which weights train, in which
dtype, with activation checkpointing, and what that costs in memory), the schedule, sharding, one optimizer step
and logging. Checkpoints are osum_min/training/checkpoints.py's.
"""

import json
import math
import re
import resource
import signal
import threading
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor
from torch.utils.checkpoint import checkpoint

from ..model.encoder import EncoderConfig, whisper_state_dict
from ..model.osum import OSUM, OSUM_PRESETS
from ..model.qwen2 import load_hf_checkpoint
from ..text.tokenizer import EOD_ID
from ..weights import load_state_dict_strict


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
    # adaptor + LoRA on pretrained parts (the GPU recipe)
    "link_and_lora": (
        "link",
        "lora",
    ),
    # adaptor + the whole LLM, encoder frozen (an LLM trained from scratch)
    "link_and_llm": (
        "link",
        "llm_all",
    ),
    "all": ("everything",),
}
FROZEN_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def freeze_for(model: OSUM, fire_module: str) -> list[str]:
    """Set requires_grad by the option; returns the trainable parameter names."""
    if fire_module not in FIRE_MODULES:
        raise TrainingError(
            f"--fire-module {fire_module!r}: choose one of {', '.join(FIRE_MODULES)}"
        )
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


def checkpoint_activations(model: OSUM) -> None:
    """Each encoder block and LLM layer keeps only its inputs for backward and recomputes the rest there
    (torch.utils.checkpoint replays the dropout masks, so the gradients are the same). Without grad (evaluation,
    decoding) a block runs as usual."""
    for block in [*model.encoder.blocks, *model.llm.layers]:

        def run(*inputs, forward=block.forward):
            return (
                checkpoint(forward, *inputs, use_reentrant=False)
                if torch.is_grad_enabled()
                else forward(*inputs)
            )

        block.forward = run


def setup_model(
    model: OSUM,
    fire_module: str,
    frozen_dtype: torch.dtype = torch.float32,
    grad_checkpoint: bool = False,
) -> list[str]:
    """Ready a float32 model for training: freeze by `fire_module` and store the frozen weights in `frozen_dtype`
    (trainable ones stay float32 master weights, so the optimizer state is float32 too); returns the trainable names.

    bf16 frozen weights halve the frozen LLM's memory; they need bf16 autocast, which every matmul runs in anyway.
    """
    trainable = freeze_for(model, fire_module)
    for parameter in model.parameters():
        if not parameter.requires_grad:
            parameter.data = parameter.data.to(frozen_dtype)
    if grad_checkpoint:
        checkpoint_activations(model)
    model.train()
    return trainable


def make_optimizer(model: nn.Module, lr: float, warmup_steps: int):
    """The original's AdamW (betas 0.9/0.99, eps 1e-6, wd 0.01) over the trainable parameters, and its WarmupLR."""
    # one kernel per step: 10x on CPU
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=lr,
        betas=(0.9, 0.99),
        eps=1e-6,
        weight_decay=0.01,
        fused=True,
    )
    return optimizer, torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_lr(warmup_steps)
    )


def trainable_table(model: nn.Module) -> str:
    """Per top-level module (the LLM split into base and LoRA): trainable / total parameters and the MiB that
    training holds for them: weights, gradients and AdamW's two moments (of the trainable ones, in their dtype)."""
    rows = {}
    for name, parameter in model.named_parameters():
        group = name.split(".")[0] + (" (lora)" if ".lora_" in name else "")
        trained = parameter.numel() * parameter.requires_grad
        counts = (
            trained,
            parameter.numel(),
            parameter.numel() * parameter.element_size(),
            trained * parameter.element_size(),
            2 * trained * parameter.element_size(),
        )
        rows[group] = tuple(a + b for a, b in zip(rows.get(group, (0,) * 5), counts))
    rows["all"] = tuple(sum(column) for column in zip(*rows.values()))
    lines = [
        f"{'module':<16}{'trainable':>14}{'total':>15}{'weights MiB':>13}{'grads MiB':>11}{'adam MiB':>11}"
    ]
    lines += [
        f"{group:<16}{trained:>14,}{total:>15,}"
        + "".join(
            f"{size / 2**20:>{width},.1f}" for size, width in zip(sizes, (13, 11, 11))
        )
        for group, (trained, total, *sizes) in rows.items()
    ]
    return "\n".join(lines)


def peak_memory_gib(device: torch.device) -> float:
    """The device's peak: CUDA's allocator peak, or on CPU the process's peak resident size (Linux reports KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30


def warmup_lr(warmup_steps: int):
    """The original's WarmupLR as a LambdaLR factor: linear ramp to the base lr at warmup, then 1/sqrt(step).

    lr(step) = lr * warmup^0.5 * min(step^-0.5, step * warmup^-1.5), with step counted from 1 as wenet does.
    """

    def factor(step: int) -> float:
        step += 1
        if warmup_steps == 0:
            return step**-0.5
        return warmup_steps**0.5 * min(step**-0.5, step * warmup_steps**-1.5)

    return factor


def build_model(
    preset: str,
    encoder_init: str | None = None,
    llm_init: str | None = None,
    vocab_size: int | None = None,
    eod_id: int | None = None,
) -> OSUM:
    """A new OSUM at a preset size, with its encoder and/or LLM taken from pretrained checkpoints if given.

    The encoder's and LLM's sizes follow their checkpoints; the adaptor is resized to join them. eod_id: the
    tokenizer's end-of-document id, which ends every label and stops decoding.
    """
    if preset not in OSUM_PRESETS:
        raise TrainingError(
            f"--preset {preset!r}: choose one of {', '.join(OSUM_PRESETS)}"
        )
    config = OSUM_PRESETS[preset]
    encoder_state = llm = None
    if encoder_init:
        checkpoint_state = torch.load(
            encoder_init, map_location="cpu", weights_only=True
        )
        if "dims" not in checkpoint_state or "model_state_dict" not in checkpoint_state:
            raise TrainingError(
                f"{encoder_init}: not an openai-whisper checkpoint (no dims/model_state_dict)"
            )
        encoder = EncoderConfig.from_whisper_dims(checkpoint_state["dims"])
        config = config.with_parts(encoder=encoder)
        encoder_state = whisper_state_dict(checkpoint_state["model_state_dict"])
    if llm_init:
        # the base weights, strictly; adapters are new
        llm = load_hf_checkpoint(llm_init, dtype=torch.float32)
        lora = config.llm
        llm_config = replace(
            llm.config,
            lora_rank=lora.lora_rank,
            lora_alpha=lora.lora_alpha,
            lora_dropout=lora.lora_dropout,
        )
        config = replace(config.with_parts(llm=llm_config), eod_id=EOD_ID)
    elif vocab_size is not None:
        config = replace(config, llm=replace(config.llm, vocab_size=vocab_size))
    if eod_id is not None:
        config = replace(config, eod_id=eod_id)
    model = OSUM(config)
    if encoder_state is not None:
        load_state_dict_strict(model.encoder, encoder_state, encoder_init)
    if llm is not None:
        load_state_dict_strict(
            model.llm, llm.state_dict(), llm_init, new=lambda name: ".lora_" in name
        )
    return model


def shard_model(model: OSUM, mesh) -> None:
    """FSDP2: each encoder block and LLM layer is a unit of its own, gathered only while it runs; the rest (embeddings,
    lm_head, adaptor, norms) is the root unit, gathered for the whole forward."""
    for block in [*model.encoder.blocks, *model.llm.layers]:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind an FSDP shard (a collective: every rank must call it); a plain tensor as it is."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def gradient_sync(model: nn.Module, enabled: bool):
    """Micro-batches before the last of a step skip the gradient all-reduce (DDP) or reduce-scatter (FSDP)."""
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(enabled)
    elif isinstance(model, nn.parallel.DistributedDataParallel) and not enabled:
        return model.no_sync()
    return nullcontext()


class StopRequest:
    """Ctrl-C asks the loop to stop at the next step boundary, where a checkpoint matches the weights exactly; a
    second Ctrl-C stops at once (KeyboardInterrupt), without a checkpoint."""

    def __init__(self, say=print):
        self.requested, self.say, self.previous = False, say, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.say(
            "interrupted: stopping after this step with a checkpoint (Ctrl-C again: stop now, without one)"
        )


class LossWindow:
    """Sums since the last log record: the token-level mean loss overall and per task, the throughput, and the
    learning rate of the last step taken."""

    def __init__(self, clock):
        self.clock, self.start = clock, clock()
        self.steps = self.tokens = self.samples = 0
        self.loss, self.task_loss, self.task_tokens, self.lr = 0.0, {}, {}, None

    def add_items(
        self, tasks: list[str], item_losses: list[float], labels: list[list[int]]
    ) -> None:
        for task, item_loss, label in zip(tasks, item_losses, labels):
            self.task_loss[task] = self.task_loss.get(task, 0.0) + item_loss
            self.task_tokens[task] = self.task_tokens.get(task, 0) + len(label)

    def add_step(self, loss_sum: float, tokens: int, samples: int, lr: float) -> None:
        self.steps, self.loss, self.tokens, self.samples = (
            self.steps + 1,
            self.loss + loss_sum,
            self.tokens + tokens,
            self.samples + samples,
        )
        self.lr = lr

    def record(self, step: int, max_steps: int) -> dict:
        elapsed = self.clock() - self.start
        return {
            "step": step,
            "loss": self.loss / self.tokens,
            "task_loss": {
                task: total / self.task_tokens[task]
                for task, total in self.task_loss.items()
            },
            "samples_per_s": self.samples / elapsed,
            "tokens_per_s": self.tokens / elapsed,
            "eta_s": (max_steps - step) * elapsed / self.steps,
            "lr": self.lr,
        }


def log_line(record: dict) -> str:
    """A log record as the line train.py prints: each figure to 4 significant digits, then each task's loss."""
    figures = " ".join(
        f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
        for key, value in record.items()
        if key != "task_loss"
    )
    return (
        figures
        + " "
        + " ".join(f"{task} {loss:.4g}" for task, loss in record["task_loss"].items())
    )


def sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Each value summed over all ranks (float64, so token counts stay exact); the values themselves in one process."""
    summed = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(summed)
    return summed.tolist()


@dataclass
class StepFigures:
    """One optimizer step, summed over all ranks: token losses, label tokens, samples; the gradient norm before
    clipping; the learning rate it stepped with (None: loss or norm not finite, so the step was skipped); the samples
    it did not learn from (features not finite, or all of a skipped step's)."""

    loss_sum: float
    tokens: float
    samples: float
    grad_norm: float
    lr: float | None
    skipped: float = 0.0


def without_nonfinite_items(batch: dict) -> tuple[dict, int]:
    """The micro-batch less its items whose features are not finite (one NaN clip made the whole step's loss NaN,
    and the step was skipped with its good clips), and how many were left out. When none is left, the batch with
    its features zeroed and no labels: every rank still runs its forward and backward (DDP, FSDP), to no effect."""
    finite = batch["mel"].isfinite().flatten(1).all(1)  # (B,)
    if finite.all():
        return batch, 0
    if not finite.any():
        return {
            **batch,
            "mel": torch.zeros_like(batch["mel"]),
            "labels_counted": 0,
        }, len(finite)
    keep = finite.nonzero()[:, 0].tolist()
    rows = {
        name: [batch[name][i] for i in keep]
        for name in ("keys", "tasks", "prompt_ids", "labels")
    }
    return {
        **batch,
        **rows,
        "mel": batch["mel"][keep],
        "mel_lens": batch["mel_lens"][keep],
    }, len(finite) - len(keep)


def label_tokens(batch: dict) -> int:
    return batch.get("labels_counted", sum(len(row) for row in batch["labels"]))


def optimization_step(
    model: nn.Module,
    micro_batches: list[dict],
    optimizer,
    scheduler,
    window: LossWindow,
    grad_clip: float,
    autocast,
    device: torch.device,
) -> StepFigures:
    """Forward and backward over the micro-batches (less their items with non-finite features), then one clipped
    optimizer step unless the loss or the gradient norm is not finite; the window gets every item's loss and the
    step's sums.

    Each micro-batch's mean loss is weighted by its share of the label tokens on all ranks, so the step minimises the
    token-level mean loss over all of them: N ranks equal one process given the same global batch."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    kept = [without_nonfinite_items(batch) for batch in micro_batches]
    micro_batches, left_out = (
        [batch for batch, _ in kept],
        sum(count for _, count in kept),
    )
    tokens = sum_over_ranks(
        [sum(label_tokens(batch) for batch in micro_batches)], device
    )[0]
    loss_sum = 0.0
    for index, batch in enumerate(micro_batches):
        with gradient_sync(model, index == len(micro_batches) - 1), autocast:
            output = model(
                batch["mel"].to(device),
                batch["mel_lens"].to(device),
                batch["prompt_ids"],
                batch["labels"],
            )
        batch_tokens = label_tokens(batch)
        # DDP averages over ranks
        (
            output.loss * (batch_tokens * world / tokens if batch_tokens else 0.0)
        ).backward()
        if batch_tokens:
            loss_sum += output.loss.item() * batch_tokens
            window.add_items(
                batch["tasks"], output.item_losses.tolist(), batch["labels"]
            )
    samples = sum(len(batch["keys"]) for batch in micro_batches if label_tokens(batch))
    loss_sum, samples, left_out = sum_over_ranks([loss_sum, samples, left_out], device)
    grad_norm = full_tensor(
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    ).item()
    lr = None
    if math.isfinite(loss_sum) and math.isfinite(grad_norm) and tokens:
        lr = scheduler.get_last_lr()[0]  # the rate this step uses
        optimizer.step()
        scheduler.step()
        window.add_step(loss_sum, tokens, samples, lr)
    optimizer.zero_grad(set_to_none=True)
    return StepFigures(
        loss_sum,
        tokens,
        samples,
        grad_norm,
        lr,
        left_out + (samples if lr is None else 0),
    )


def trim_log(path: Path, step: int) -> None:
    """Drop the records of steps after `step` (run again after a resume) and a last line cut short by a crash."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step", 0) <= step:
            kept.append(line + "\n")
    path.write_text("".join(kept))


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
