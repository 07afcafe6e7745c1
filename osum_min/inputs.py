"""The files a run decodes: audio paths, folders and lists (one path a line, or wenet raw jsonl
`{"key", "wav", "txt"}`), each with its duration from the header (pipeline.py decodes them longest first)."""
import json
from dataclasses import dataclass
from pathlib import Path

import soundfile

from .audio import AUDIO_SUFFIXES
from .data_formats import DataError, resolve_listed_path


@dataclass
class Item:
    path: str
    key: str
    reference: str | None = None  # the list's `txt`, when scoring
    seconds: float = 0.0  # from the file header, for length-sorted batching
    problem: str | None = None  # a list line we cannot use: skipped and counted like an unreadable file


def list_entry(path: Path, number: int, line: str) -> Item:
    """One line of a list: a path, or wenet jsonl {"key", "wav", "txt"}; a bad line gives an Item with its problem."""
    where = f"{path}:{number}"
    entry = {"wav": line.strip()}
    if line.lstrip().startswith("{"):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            return Item(where, where, problem="not a wenet list line (JSON with a \"wav\" field)")
        if not isinstance(entry, dict):
            return Item(where, where, problem="not a wenet list line (a JSON object with a \"wav\" field)")
    if not isinstance(entry.get("wav"), str) or not entry["wav"].strip():
        return Item(where, where, problem=f"\"wav\" is {json.dumps(entry.get('wav'))[:40]}, not a path")
    if not isinstance(entry.get("txt"), (str, type(None))):
        return Item(where, where, problem=f"\"txt\" is {json.dumps(entry['txt'])[:40]}, not text")
    wav = resolve_listed_path(entry["wav"], path.parent)
    return Item(wav, str(entry.get("key", wav)), entry.get("txt"))


def read_list(path: Path) -> list[Item]:
    """One audio path per line, or wenet raw jsonl; paths may be relative to the list. A list none of whose lines
    names an existing file is refused as a whole (`infer.py README.md`), rather than skipped line by line."""
    items = [list_entry(path, number, line)
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
    if items and not any(item.problem is None and Path(item.path).exists() for item in items):
        raise DataError(f"{path}: not a list of audio files (none of its {len(items)} lines names an existing file)")
    return items


def collect_inputs(paths: list[str]) -> list[Item]:
    """Audio files, folders (searched for audio by suffix) and lists, in the order given, each with its duration
    from the file header."""
    items = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            items += [Item(str(p), str(p)) for p in sorted(path.rglob("*")) if p.suffix.lower() in AUDIO_SUFFIXES]
        elif not path.exists():
            raise DataError(f"{name}: no such file or directory")
        elif path.suffix.lower() in AUDIO_SUFFIXES:
            items.append(Item(name, name))
        else:
            try:
                items += read_list(path)
            except UnicodeDecodeError:
                raise DataError(f"{name}: neither audio (by its suffix) nor a text list of audio files") from None
    for item in items:
        try:
            item.seconds = soundfile.info(item.path).duration
        except Exception:  # noqa: BLE001  unreadable files sort anywhere; load_audio names the problem later
            item.seconds = 0.0
    return items
