"""OSUM's data formats: wenet raw jsonl lists, tar shard lists, weighted mixes of lists, and writing shards.

A raw jsonl list has one `{"key", "wav", "txt"[, "task", "start", "end"]}` a line (start/end in seconds). A shard
list has one tar path a line; a tar holds, per key, KEY.wav|flac|..., KEY.txt, KEY.task and optional KEY.lang,
.speaker, .emotion, .gender, .duration. A mix is the original's data yaml `name: {path: LIST, weight: W}` (or the
same table as JSON); `SpeechDataset` applies the weights (see osum_min/data/dataset.py).
"""

import io
import json
import logging
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch

from ..audio import MIN_SAMPLES, SAMPLE_RATE, load_audio
from ..files import (
    MAX_CONFIG_BYTES,
    MAX_LIST_BYTES,
    FileError,
    open_file,
    parse_json,
    printable,
    read_json,
    read_text,
)
from ..progress import Progress

log = logging.getLogger(__name__)

# audio members of a shard sample, first found is used
AUDIO_MEMBERS = (
    "wav",
    "flac",
    "mp3",
    "ogg",
    "opus",
    "sph",
)
# text members of a shard sample
INFO_FIELDS = (
    "txt",
    "task",
    "lang",
    "speaker",
    "emotion",
    "gender",
    "duration",
)


class DataError(ValueError):
    """A data list, mix or sample we refuse; the message is one line naming the file and the problem."""


@dataclass
class DataSource:
    """One list of a mix: its items (raw samples, or `{"shard": tar path}`) and its weight."""

    name: str
    items: list[dict]
    weight: float = 1.0


def resolve_listed_path(name: str, base: Path) -> str:
    """A relative path is taken from the list's folder when it exists there, else as written (the original reads
    it from the working directory)."""
    # os.path.exists: False, not an OSError, for a name too long (load_audio names it)
    candidate = base / name
    return (
        str(candidate)
        if not Path(name).is_absolute() and os.path.exists(candidate)
        else name
    )


def read_data_list(path) -> list[dict]:
    """Raw jsonl lines become sample dicts; any other line is a tar shard path, read as `{"shard": path}`."""
    path = Path(path)
    try:
        text_lines = read_text(path, "data list", MAX_LIST_BYTES).splitlines()
    except FileError as err:
        raise DataError(f"{err.path}: cannot read data list ({err.problem})") from None
    items, lines = [], {}  # lines: (key, task) -> its line
    for number, line in enumerate(text_lines, start=1):
        line = line.strip()
        if not line:
            continue
        if not line.startswith("{"):
            items.append({"shard": resolve_listed_path(line, path.parent)})
            continue
        try:
            item = parse_json(line, f"{path}:{number}")
        except FileError as err:
            raise DataError(str(err)) from None
        if not isinstance(item, dict) or "key" not in item or "wav" not in item:
            raise DataError(
                f'{path}:{number}: a raw sample needs "key" and "wav", got {line[:80]!r}'
            )
        sample = (printable(str(item["key"])), str(item.get("task", "")))
        if sample in lines:
            raise DataError(
                f"{path}:{number}: key {sample[0]!r} (task {sample[1] or 'none'}) is given twice "
                f"(also line {lines[sample]}): one sample would count twice"
            )
        lines[sample] = number
        items.append(
            {**item, "wav": resolve_listed_path(str(item["wav"]), path.parent)}
        )
    return items


def read_prompts(path) -> dict[str, tuple[str, ...]]:
    """A prompts file, JSON {task tag: [prompt, ...]}: new tasks, or other paraphrases of the original's."""
    try:
        table = read_json(path, "prompts file")
    except FileError as err:
        raise DataError(f"{err.path}: cannot read prompts ({err.problem})") from None
    if not isinstance(table, dict):
        raise DataError(
            f"{printable(path)}: a prompts file is a JSON object {{task tag: [prompt, ...]}}, "
            f"not {type(table).__name__}"
        )
    for tag, prompts in table.items():
        if (
            not isinstance(prompts, list)
            or not prompts
            or not all(isinstance(p, str) and p.strip() for p in prompts)
        ):
            raise DataError(
                f"{printable(path)}: {printable(tag)!r} needs a list of prompt texts, "
                f"got {json.dumps(prompts)[:60]}"
            )
    return {tag: tuple(prompts) for tag, prompts in table.items()}


def _parse_mix_yaml(text: str, path: Path) -> dict:
    """The original's two-level data yaml (`name:` then indented `path: ...` and `weight: ...`), without PyYAML."""
    table, current = {}, None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split(" #")[0].rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, colon, value = line.strip().partition(":")
        key, value = key.strip().strip("'\""), value.strip().strip("'\"")
        if (
            not colon
            or (not raw[0].isspace() and value)
            or (raw[0].isspace() and current is None)
        ):
            raise DataError(
                f"{path}:{number}: expected `name:` and indented `path:`/`weight:` lines, got {raw!r}"
            )
        if raw[0].isspace():
            current[key] = value
        else:
            current = table.setdefault(key, {})
    return table


def read_data_mix(path) -> list[DataSource]:
    """The original's data yaml (or the same table as JSON): name -> {path: list file, weight: number}."""
    path = Path(path)
    try:
        text = read_text(path, "data mix", MAX_CONFIG_BYTES)
        table = (
            parse_json(text, path)
            if path.suffix == ".json"
            else _parse_mix_yaml(text, path)
        )
    except FileError as err:
        raise DataError(f"{err.path}: cannot read data mix ({err.problem})") from None
    if not isinstance(table, dict) or not table:
        raise DataError(f"{path}: a data mix is a table name -> {{path, weight}}")
    sources = []
    for name, entry in table.items():
        try:
            weight = float(entry.get("weight", 1))
            list_path = resolve_listed_path(str(entry["path"]), path.parent)
        except (AttributeError, KeyError, TypeError, ValueError):
            raise DataError(
                f"{path}: entry {name!r} needs a `path` and a numeric `weight`, got {entry!r}"
            ) from None
        if weight < 0:
            raise DataError(f"{path}: entry {name!r} has a negative weight {weight}")
        sources.append(DataSource(name, read_data_list(list_path), weight))
    return sources


def is_mix(path: Path) -> bool:
    """A data mix (yaml, or a JSON table of {path, weight}) rather than a list."""
    if path.suffix in (".yaml", ".yml"):
        return True
    if path.suffix != ".json":
        return False
    try:
        table = read_json(path, "data mix")
    except FileError:
        return False
    return isinstance(table, dict) and all(
        isinstance(entry, dict) and "path" in entry for entry in table.values()
    )


def _cut(wav: torch.Tensor, item: dict) -> torch.Tensor:
    """The `start`/`end` segment (seconds) of a 16 kHz waveform, with wenet's int() sample offsets; an end past
    the file ends with it, as torchaudio's reader does."""
    if "start" not in item and "end" not in item:
        return wav
    start = int(float(item.get("start", 0)) * SAMPLE_RATE)
    end = min(
        int(float(item["end"]) * SAMPLE_RATE) if "end" in item else len(wav), len(wav)
    )
    if start < 0 or end - start < MIN_SAMPLES:
        raise DataError(
            f"segment {item.get('start', 0)}-{item.get('end', 'end')} s of a "
            f"{len(wav) / SAMPLE_RATE:.3f} s file holds fewer than {MIN_SAMPLES} samples"
        )
    return wav[start:end]


def _pcm16_wav(wav: torch.Tensor) -> bytes:
    """16-bit PCM wav bytes; int16 = round(x * 32768), so 16-bit sources come back bit for bit."""
    samples = np.clip(np.round(wav.numpy() * 32768.0), -32768, 32767).astype(np.int16)
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_shards(jsonl_path, out_dir, samples_per_shard: int = 1000) -> Path:
    """Write a raw jsonl list as tar shards (audio at 16 kHz, cut to start/end, stored as 16-bit PCM wav as the
    original's shard tool does) plus `out_dir/shards.list`, the shard list to train on; returns that list's path.
    Unreadable samples are skipped with a warning."""
    items = read_data_list(jsonl_path)
    if any("shard" in item for item in items):
        raise DataError(
            f"{jsonl_path}: make_shards wants a raw jsonl list, found tar paths"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shard_paths, tar, written = [], None, 0
    try:
        with Progress(len(items), "writing shards") as bar:
            for item in items:
                bar.update()
                try:
                    if "txt" not in item:
                        raise DataError("no transcript (txt)")
                    audio = _pcm16_wav(_cut(load_audio(item["wav"]), item))
                except (ValueError, OSError) as err:
                    log.warning("make_shards: skipping %s: %s", item["key"], err)
                    continue
                if written % samples_per_shard == 0:
                    if tar is not None:
                        tar.close()
                    shard_paths.append(out_dir / f"shard_{len(shard_paths):06d}.tar")
                    tar = tarfile.open(shard_paths[-1], "w")
                _add_member(tar, f"{item['key']}.wav", audio)
                for name in INFO_FIELDS:
                    if name in item:
                        _add_member(
                            tar,
                            f"{item['key']}.{name}",
                            str(item[name]).encode("utf-8"),
                        )
                written += 1
    finally:
        if tar is not None:
            tar.close()
    list_path = out_dir / "shards.list"
    list_path.write_text(
        "".join(f"{path.resolve()}\n" for path in shard_paths), encoding="utf-8"
    )
    return list_path


def _tar_groups(path: str):
    """A tar's members grouped by key (the name up to its last dot), in stream order, as wenet's tar reader."""
    with (
        os.fdopen(open_file(path, "tar shard"), "rb") as f,
        tarfile.open(fileobj=f, mode="r|*") as tar,
    ):
        group = {}
        for member in tar:
            if not member.isfile():
                continue
            key, _, suffix = member.name.rpartition(".")
            if group and key != group["key"]:
                yield group
                group = {}
            group["key"] = key
            group[suffix] = tar.extractfile(member).read()
        if group:
            yield group


def _shard_sample(group: dict, shard: str) -> dict:
    """Bytes of one shard key -> {key, txt, task, ..., audio}."""
    suffix = next((s for s in AUDIO_MEMBERS if s in group), None)
    if suffix is None:
        raise DataError(f"no audio member ({', '.join(AUDIO_MEMBERS)})")
    sample = {
        name: group[name].decode("utf-8").strip()
        for name in INFO_FIELDS
        if name in group
    }
    audio = io.BytesIO(group[suffix])
    # load_audio names its source in errors
    audio.name = f"{shard}:{group['key']}.{suffix}"
    return {**sample, "key": group["key"], "audio": load_audio(audio)}


def read_samples(items: list[dict], on_skip):
    """Items (raw samples or `{"shard": path}`) -> samples with a 16 kHz `audio` waveform and their `source`.
    A bad sample, or the unreadable rest of a tar, is reported as on_skip(key, source, problem) and passed over."""
    for item in items:
        if "shard" not in item:
            try:
                audio = _cut(load_audio(item["wav"]), item)
            except (ValueError, OSError) as err:
                on_skip(item["key"], item["wav"], err)
                continue
            yield {**item, "audio": audio, "source": item["wav"]}
            continue
        shard, groups = item["shard"], _tar_groups(item["shard"])
        while True:
            try:
                group = next(groups)
            except StopIteration:
                break
            except FileError as err:
                on_skip("(shard)", shard, err.problem)
                break
            except (OSError, EOFError, tarfile.TarError) as err:
                on_skip("(rest of shard)", shard, f"unreadable tar ({err})")
                break
            try:
                sample = _shard_sample(group, shard)
            except (ValueError, OSError) as err:
                on_skip(group["key"], shard, err)
                continue
            yield {**sample, "source": shard}
