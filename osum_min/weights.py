"""Our weight files: safetensors, streamed tensor by tensor, sharded above a size, loaded strictly.

We write the safetensors format ourselves (8-byte header length, JSON header, raw bytes) so that converting a
15 GB checkpoint never holds more than one converted tensor in memory; the `safetensors` package reads it.
A directory's files must agree (one model.safetensors, or exactly the shards its index names): a mix of two
writes is refused, and `replacing_directory` swaps a whole new directory in so that no mix is ever left behind.
"""

import glob
import json
import os
import re
import shutil
import struct
from collections.abc import Callable, Iterable
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
from safetensors import safe_open

from .files import FileError, atomic_write, printable, write_problem

SAFETENSORS_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.bool: "BOOL",
    torch.uint8: "U8",
    torch.int8: "I8",
}
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
SHARD_NAME = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
# what a model directory we write holds
MODEL_FILES = re.compile(
    r"(config\.json|tokenizer\.tiktoken|model\.safetensors(\.index\.json)?|"
    + SHARD_NAME.pattern
    + r")(\.tmp)?"
)


GET_WEIGHTS = (
    "get them with `python convert.py --download`, or convert the original's checkpoint with "
    "`python convert.py infer.pt --tokenizer QWEN2_TOKENIZER_DIR --out weights/osum`"
)


def weights_problem(directory) -> str | None:
    """Why `directory` holds no converted OSUM weights (None: it does): the one check, and the one message, of
    every front end (infer.py, its --serve, eval.py run), before anything is loaded."""
    try:
        found = Path(directory, "config.json").is_file()
    except (OSError, ValueError):  # a name too long, a NUL byte, a lone surrogate
        found = False
    return (
        None if found else f"no OSUM weights in {printable(directory)}/: {GET_WEIGHTS}"
    )


class WeightsError(ValueError):
    """A weight file or directory that does not match the model: one line, naming the file and the keys."""


def describe_keys(keys: list[str], limit: int = 5) -> str:
    """'N key(s): a, b, ...' for one-line errors about missing or unexpected keys."""
    shown = ", ".join(keys[:limit])
    return f"{len(keys)} key(s): {shown}" + (", ..." if len(keys) > limit else "")


def _write_shard(
    path: Path,
    entries: list[tuple[str, torch.Size, torch.dtype, Callable]],
    metadata: dict,
):
    header, offset = {"__metadata__": metadata}, 0
    for name, shape, dtype, _ in entries:
        nbytes = shape.numel() * dtype.itemsize
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)  # keep the data 8-byte aligned
    # a full disk, an interrupt: no partial file stays behind
    with atomic_write(path) as f:
        f.write(struct.pack("<Q", len(header_bytes)) + header_bytes)
        for name, shape, dtype, produce in entries:
            tensor = produce().contiguous()
            if tensor.shape != shape or tensor.dtype != dtype:
                raise WeightsError(
                    f"{path}: {name} produced {tuple(tensor.shape)} {tensor.dtype}, "
                    f"declared {tuple(shape)} {dtype}"
                )
            f.write(
                tensor.cpu().view(torch.uint8).numpy().tobytes()
                if tensor.numel()
                else b""
            )


def save_weights(
    directory,
    entries: Iterable[tuple[str, torch.Size, torch.dtype, Callable[[], torch.Tensor]]],
    max_shard_bytes: int = 5 * 2**30,
    metadata: dict | None = None,
    progress=None,
) -> list[Path]:
    """Write (name, shape, dtype, produce) entries; `produce()` makes one tensor only when it is written.

    Above max_shard_bytes the weights are split into model-0000N-of-0000M.safetensors plus an index, as
    Hugging Face does.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shards, current, size = [], [], 0
    for entry in entries:
        nbytes = entry[1].numel() * entry[2].itemsize
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(entry)
        size += nbytes
    shards.append(current)
    metadata = {"format": "pt", **(metadata or {})}
    if len(shards) == 1:
        names = [WEIGHTS_NAME]
    else:
        names = [
            f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            for i in range(len(shards))
        ]
    for name, shard in zip(names, shards):
        counted = [
            (n, s, d, _counting(p, progress, s.numel() * d.itemsize))
            for n, s, d, p in shard
        ]
        _write_shard(directory / name, counted, metadata)
    if len(shards) > 1:
        weight_map = {
            entry[0]: name for name, shard in zip(names, shards) for entry in shard
        }
        (directory / INDEX_NAME).write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1)
        )
    keep = set(names) | ({INDEX_NAME} if len(shards) > 1 else set())
    for stale in {
        WEIGHTS_NAME,
        INDEX_NAME,
        *filter(SHARD_NAME.fullmatch, os.listdir(directory)),
    } - keep:
        # an earlier write's files would disagree with these
        (directory / stale).unlink(missing_ok=True)
    return [directory / name for name in names]


@contextmanager
def replacing_directory(out):
    """`with replacing_directory(out) as new:` write a model into `new`, a fresh directory beside `out`; on success
    `new` replaces `out` as a whole, on any exception it is removed and `out` stays as it was. Between the two
    renames `out` is briefly absent (the old model waits in `.OUT.old-PID`; a run killed there is put right by
    the next), never a mix of two models."""
    # a link keeps pointing at the model
    out = Path(out).resolve() if Path(out).is_symlink() else Path(out)
    if out.exists() and not out.is_dir():
        raise WeightsError(f"{out}: exists and is not a directory")
    foreign = (
        sorted(name for name in os.listdir(out) if not MODEL_FILES.fullmatch(name))
        if out.is_dir()
        else []
    )
    if foreign:
        raise WeightsError(
            f"{out}: holds files that are not a model's ({', '.join(foreign[:3])}); replacing it "
            "would delete them: choose an empty or new --out"
        )
    _clear_leftovers(out)
    new, old = (
        out.with_name(f".{out.name}.{kind}-{os.getpid()}") for kind in ("new", "old")
    )
    new.mkdir(parents=True)
    try:
        yield new
    except BaseException as err:
        shutil.rmtree(new, ignore_errors=True)
        # a full disk names --out, not the hidden folder beside it
        if isinstance(err, (OSError, FileError)):
            raise WeightsError(
                f"{out}: cannot write the model ({write_problem(err)}); {out} is as it was"
            ) from None
        raise
    if out.is_dir():
        os.replace(out, old)
        os.replace(new, out)
        shutil.rmtree(old)
    else:
        os.replace(new, out)


def _clear_leftovers(out: Path) -> None:
    """What a killed replacing_directory left beside `out` (a model's size each): a new directory is removed; an old
    model moved aside just before the kill is put back when `out` is missing, removed otherwise."""
    for leftover in sorted(out.parent.glob(f".{glob.escape(out.name)}.*-*")):
        kind, _, pid = leftover.name[len(out.name) + 2 :].partition("-")
        if kind not in ("new", "old") or not pid.isdigit() or _running(int(pid)):
            continue
        if kind == "old" and not out.exists():
            os.replace(leftover, out)
        else:
            shutil.rmtree(leftover, ignore_errors=True)


def _running(pid: int) -> bool:
    """Whether another process with this id runs (ours is not writing yet: its leftovers are from a dead one)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _counting(produce, progress, nbytes):
    if progress is None:
        return produce

    def wrapped():
        tensor = produce()
        progress.update(nbytes)
        return tensor

    return wrapped


def weight_files(directory) -> list[Path]:
    """The safetensors files of a model directory, after checking that they agree with each other: one line
    naming the directory and the disagreement (a leftover index, a shard the index does not name, a missing one)."""
    directory = Path(directory)
    index = directory / INDEX_NAME
    shards = (
        sorted(name for name in os.listdir(directory) if SHARD_NAME.fullmatch(name))
        if directory.is_dir()
        else []
    )
    if index.is_file():
        try:
            named = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise WeightsError(
                f"{index}: not a safetensors index (JSON with a weight_map)"
            ) from None
        if not all(
            isinstance(name, str) and SHARD_NAME.fullmatch(name) for name in named
        ):
            raise WeightsError(
                f"{index}: names files that are not shards model-NNNNN-of-NNNNN.safetensors"
            )
        problems = (
            [f"{WEIGHTS_NAME} beside the index"]
            if (directory / WEIGHTS_NAME).exists()
            else []
        )
        problems += [
            f"the index names missing {name}"
            for name in named
            if not (directory / name).is_file()
        ]
        problems += [
            f"{name} is not in the index" for name in shards if name not in named
        ]
        if problems:
            raise WeightsError(
                f"{directory}: files from different writes ({'; '.join(problems[:3])}); "
                "convert or save into it again"
            )
        return [directory / name for name in named]
    if (directory / WEIGHTS_NAME).is_file():
        if shards:
            raise WeightsError(
                f"{directory}: files from different writes ({WEIGHTS_NAME} beside shards "
                f"{', '.join(shards[:3])} and no index); convert or save into it again"
            )
        return [directory / WEIGHTS_NAME]
    raise WeightsError(f"{directory}: no {WEIGHTS_NAME} or {INDEX_NAME}")


def check_state(
    module: torch.nn.Module,
    shapes: dict[str, torch.Size],
    source: str,
    new: Callable[[str], bool] = lambda name: False,
) -> dict[str, str]:
    """The one strict rule: tensors of these names and shapes fill every tensor of `module`, or it fails in one line
    naming `source` and the keys. `new(name)` names tensors that may be absent because they start fresh (a new run's
    LoRA). Returns the tied names {name: the first name of the tensor it shares} (tied embeddings), which are
    filled through their first name and need no tensor of their own."""
    targets = module.state_dict(keep_vars=True)
    first_name, tied = {}, {}
    for name, tensor in targets.items():
        if first_name.setdefault(id(tensor), name) != name:
            tied[name] = first_name[id(tensor)]
    unexpected = [name for name in shapes if name not in targets]
    if unexpected:
        raise WeightsError(f"{source}: unexpected {describe_keys(unexpected)}")
    missing = [
        name
        for name in targets
        if name not in shapes and name not in tied and not new(name)
    ]
    if missing:
        raise WeightsError(f"{source}: missing {describe_keys(missing)}")
    for name, shape in shapes.items():
        if shape != targets[name].shape:
            raise WeightsError(
                f"{source}: {name} has shape {tuple(shape)}, the model's is {tuple(targets[name].shape)}"
            )
    return tied


def _assign(
    module: torch.nn.Module, state: dict, tied: dict[str, str]
) -> torch.nn.Module:
    """Put checked tensors in place (no copy: a module built on the meta device costs nothing); tied names follow."""
    module.load_state_dict(
        {name: t for name, t in state.items() if name not in tied},
        strict=False,
        assign=True,
    )
    # assigning replaced the shared tensor: its other names follow
    for (
        name,
        shared,
    ) in tied.items():
        owner, _, attribute = name.rpartition(".")
        setattr(module.get_submodule(owner), attribute, module.get_parameter(shared))
    return module


def load_state_dict_strict(
    module: torch.nn.Module,
    state: dict,
    source: str,
    new: Callable[[str], bool] = lambda name: False,
) -> torch.nn.Module:
    """`state` into `module` under `check_state`'s rule, assigned rather than copied."""
    return _assign(
        module,
        state,
        check_state(module, {name: t.shape for name, t in state.items()}, source, new),
    )


def _open(path: Path):
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    # safetensors raises its own error types for truncated or foreign files
    except Exception as err:
        raise WeightsError(f"{path}: not a readable safetensors file ({err})") from None


def load_weights(
    model: torch.nn.Module, directory, device=None, dtype=None, convert=None
) -> None:
    """Fill every parameter and buffer of `model` (built on the meta device) from a directory, strictly.

    The names and shapes are checked from the files' headers before any tensor is read, so a directory that does
    not fit fails at once. Tensors are read from the memory-mapped files one at a time and cast to `dtype` (the
    floating ones), so peak memory is the final model plus one tensor; a tied name's stored copy is never read.
    convert(model, read): puts some modules in their final form itself (quantize.quantize_int8), reading
    their tensors by name with `read` (cast to `dtype`, tied names followed); the rest are read after it.
    """
    files = weight_files(directory)
    where = {}
    for path in files:
        with _open(path) as handle:
            where.update(
                (name, (path, torch.Size(handle.get_slice(name).get_shape())))
                for name in handle.keys()
            )
    tied = check_state(
        model, {name: shape for name, (_, shape) in where.items()}, str(directory)
    )
    with ExitStack() as stack:
        handles = {path: stack.enter_context(_open(path)) for path in files}

        used = set()  # what convert read

        def read(name):
            used.add(name)
            name = tied.get(name, name)
            tensor = handles[where[name][0]].get_tensor(name)
            if tensor.is_floating_point() and dtype is not None:
                tensor = tensor.to(dtype)
            return tensor.to(device) if device is not None else tensor

        if convert is not None:
            convert(model, read)
        state = {
            name: read(name) for name in where if name not in tied and name not in used
        }
    tied = {name: first for name, first in tied.items() if name not in used}
    _assign(model, state, tied)
