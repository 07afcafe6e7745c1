"""Training checkpoints: everything a resume needs, at a step boundary, written atomically.

A checkpoint holds only what training changes (trainable tensors, optimizer, scheduler, each rank's data position
and RNG states, step), all of it tensors and plain data, so it loads with `torch.load(weights_only=True)`, which
runs no code. The frozen weights come from the model's init directory, so a checkpoint of a 7B run stays small.
"""

import pickle
import random
import re
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from ..files import FileError, atomic_write, check_file
from .steps import TrainingError, full_tensor
from ..weights import describe_keys


def rng_states() -> dict:
    """Every RNG training draws from, as tensors and plain data (numpy's MT19937 key as an int64 tensor)."""
    _, key, *numpy_rest = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (torch.from_numpy(key.astype(np.int64)), *numpy_rest),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    key, *numpy_rest = states["numpy"]
    np.random.set_state(("MT19937", key.numpy().astype(np.uint32), *numpy_rest))
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


CHECKPOINT_NAME = re.compile(r"step_(\d+)\.pt")
CHECKPOINT_KEYS = {"model", "optimizer", "scheduler", "step", "positions", "rng"}
TORCH_ADVICE = (
    "Weights only load failed",
    "Please file an issue",
    "Check the documentation",
)


def save_checkpoint(out: Path, step: int, state: dict, keep_last: int) -> Path:
    """Write out/step_N.pt atomically (temp file synced to disk, then rename); delete all but the newest keep_last.
    A full disk is one line naming the checkpoint, and its partial .tmp is removed."""
    path = out / f"step_{step:08d}.pt"
    try:
        with atomic_write(path) as f:
            torch.save(state, f)
    except FileError as err:
        raise TrainingError(str(err)) from None
    for old in checkpoints(out)[:-keep_last] if keep_last > 0 else []:
        old.unlink()
    return path


def write_checkpoint(
    out: Path,
    step: int,
    model: nn.Module,
    optimizer,
    scheduler,
    trainable: list[str],
    position: tuple[int, int],
    args: dict,
    keep_last: int,
) -> Path | None:
    """Everything a resume needs, at a step boundary: this rank's data position and its RNG states as they are now.
    Under torchrun every rank calls it (the tensors are gathered whole, FSDP shards included); rank 0 writes."""
    positions, rngs = [position], [rng_states()]
    if dist.is_initialized():
        positions, rngs = [None] * dist.get_world_size(), [None] * dist.get_world_size()
        dist.all_gather_object(positions, position)
        dist.all_gather_object(rngs, rng_states())
    trained = {
        name: full_tensor(model.get_parameter(name).detach()).cpu()
        for name in trainable
    }
    optimizer_state = get_optimizer_state_dict(
        model,
        optimizer,
        options=StateDictOptions(full_state_dict=True, cpu_offload=True),
    )
    if dist.is_initialized() and dist.get_rank() != 0:
        return None
    state = {
        "model": trained,
        "optimizer": optimizer_state,
        "scheduler": scheduler.state_dict(),
        "step": step,
        "positions": positions,
        "rng": rngs,
        "args": {
            key: str(value) if isinstance(value, Path) else value
            for key, value in args.items()
        },
    }
    return save_checkpoint(out, step, state, keep_last)


def checkpoints(out: Path) -> list[Path]:
    """Finished checkpoints in step order (a .tmp left by a crash is not one)."""
    return sorted(
        path
        for path in Path(out).glob("step_*.pt")
        if CHECKPOINT_NAME.fullmatch(path.name)
    )


def load_checkpoint(path: Path) -> dict:
    """A train.py checkpoint, unpickled with weights_only=True: a file holding anything but tensors and plain data
    (a crafted pickle that would run code) is refused, and nothing in it runs."""
    try:
        check_file(path, "training checkpoint")
    except FileError as err:
        raise TrainingError(str(err)) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for truncated or foreign files
        lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [
            type(err).__name__
        ]
        found = (
            re.search(r"GLOBAL (\S+)", str(err))
            if isinstance(err, pickle.UnpicklingError)
            else None
        )
        if found:
            raise TrainingError(
                f"{path}: refused: it holds a Python object ({found.group(1)}), not only tensors and "
                f"plain data; a train.py checkpoint never does"
            ) from None
        # drop torch's advice to turn the safety off
        if isinstance(err, pickle.UnpicklingError):
            lines = [line for line in lines if not line.startswith(TORCH_ADVICE)] or [
                type(err).__name__
            ]
        raise TrainingError(
            f"{path}: not a readable training checkpoint ({lines[0]})"
        ) from None
    if not isinstance(state, dict) or not CHECKPOINT_KEYS <= set(state):
        raise TrainingError(
            f"{path}: not a train.py checkpoint (no {', '.join(sorted(CHECKPOINT_KEYS))})"
        )
    return state


def newest_checkpoint(out: Path, say=print) -> tuple[Path, dict] | None:
    """The newest readable checkpoint in `out`; unreadable newer ones (a save cut short by a crash or a full disk)
    are passed over with a warning. None when there is none; an error when none of them reads."""
    found = checkpoints(out)
    for index, path in enumerate(reversed(found)):
        try:
            return path, load_checkpoint(path)
        except TrainingError as err:
            if index == len(found) - 1:
                raise
            say(f"warning: {err}: resuming from the checkpoint before it")
    return None


def restore(
    checkpoint: tuple[Path, dict],
    model: nn.Module,
    optimizer,
    scheduler,
    rank: int,
    world: int,
) -> tuple[int, tuple]:
    """Load a checkpoint's (path, state) trained tensors (into shards under FSDP), optimizer, scheduler and this
    rank's RNG states; returns (step, this rank's data position)."""
    path, state = checkpoint
    if len(state["positions"]) != world:
        raise TrainingError(
            f"{path}: saved with {len(state['positions'])} processes, resuming with {world}"
        )
    trainable = sorted(
        name for name, parameter in model.named_parameters() if parameter.requires_grad
    )
    # set_model_state_dict below is not strict: a mismatch would pass unseen
    if sorted(state["model"]) != trainable:
        raise TrainingError(
            f"{path}: trained {describe_keys(sorted(state['model']))}; this run trains "
            f"{describe_keys(trainable)}: resume with the --fire-module it was saved with"
        )
    full_state = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(model, state["model"], options=full_state)
    set_optimizer_state_dict(model, optimizer, state["optimizer"], options=full_state)
    scheduler.load_state_dict(state["scheduler"])
    set_rng_states(state["rng"][rank])
    return state["step"], tuple(state["positions"][rank])
