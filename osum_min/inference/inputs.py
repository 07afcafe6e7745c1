"""The files a run decodes: audio paths, folders and lists (one path a line, or wenet raw jsonl
`{"key", "wav", "txt"}`), each with its duration from the header (pipeline.py decodes them longest first)."""

import errno
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..audio import AUDIO_SUFFIXES, header_seconds
from ..data.formats import DataError, resolve_listed_path
from ..files import (
    MAX_LIST_BYTES,
    FileError,
    check_file,
    parse_json,
    printable,
    read_text,
)


@dataclass
class Item:
    path: str
    key: str
    reference: str | None = None  # the list's `txt`, when scoring
    seconds: float = 0.0  # from the file header, for length-sorted batching
    # a list line we cannot use: skipped and counted like an unreadable file
    problem: str | None = None


def list_entry(path: Path, number: int, line: str) -> Item:
    """One line of a list: a path, or wenet jsonl {"key", "wav", "txt"}; a bad line gives an Item with its problem."""
    where = f"{printable(path)}:{number}"
    entry = {"wav": line.strip()}
    if line.lstrip().startswith("{"):
        try:
            entry = parse_json(line, where)
        except FileError as err:
            return Item(where, where, problem=f"not a wenet list line ({err.problem})")
        if not isinstance(entry, dict):
            return Item(
                where,
                where,
                problem='not a wenet list line (a JSON object with a "wav" field)',
            )
    if not isinstance(entry.get("wav"), str) or not entry["wav"].strip():
        return Item(
            where,
            where,
            problem=f'"wav" is {json.dumps(entry.get("wav"))[:40]}, not a path',
        )
    if not isinstance(entry.get("txt"), (str, type(None))):
        return Item(
            where, where, problem=f'"txt" is {json.dumps(entry["txt"])[:40]}, not text'
        )
    wav = resolve_listed_path(entry["wav"], path.parent)
    text = entry.get("txt")
    return Item(
        wav,
        printable(str(entry.get("key", wav))),
        None if text is None else printable(text),
    )


def read_list(path: Path) -> list[Item]:
    """One audio path per line, or wenet raw jsonl; paths may be relative to the list. A list none of whose lines
    names an existing file is refused as a whole (`infer.py README.md`), rather than skipped line by line."""
    lines = read_text(path, "list of audio files", MAX_LIST_BYTES).splitlines()
    items = [
        list_entry(path, number, line)
        for number, line in enumerate(lines, 1)
        if line.strip()
    ]
    if items and not any(item.problem is None and _exists(item.path) for item in items):
        raise DataError(
            f"{printable(path)}: not a list of audio files (none of its {len(items)} lines names an "
            "existing file)"
        )
    return items


def _exists(path: str) -> bool:
    try:
        return os.path.exists(path)
    except ValueError:  # a NUL byte in the name
        return False


def _folder_items(folder: Path) -> list[Item]:
    """A folder's audio files by suffix, sorted; one that is not a regular file (a FIFO, a socket, a loop of
    symbolic links) is an Item with its problem, never opened."""
    items = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in AUDIO_SUFFIXES:
            continue
        try:
            check_file(path, "audio file")
            items.append(Item(str(path), printable(path)))
        except FileError as err:
            items.append(Item(str(path), printable(path), problem=err.problem))
    return items


def collect_inputs(paths: list[str]) -> list[Item]:
    """Audio files, folders (searched for audio by suffix) and lists, in the order given, each with its duration
    from the file header. A path that does not exist, or a list that cannot be read, is refused as a whole
    (DataError); an audio path that is not a file (a FIFO, a name over 255 bytes, ...) is that item's error."""
    items = []
    for name in paths:
        path = Path(name)
        try:
            is_dir = stat.S_ISDIR(os.stat(path).st_mode)
        # a name too long, a loop of links: load_audio or read_list names it
        except OSError as err:
            if err.errno == errno.ENOENT:
                raise DataError(
                    f"{printable(name)}: no such file or directory"
                ) from None
            is_dir = False
        if is_dir:
            items += _folder_items(path)
        elif path.suffix.lower() in AUDIO_SUFFIXES:
            items.append(Item(name, printable(name)))
        else:
            try:
                items += read_list(path)
            except FileError as err:
                raise DataError(
                    f"{err.path}: neither audio (by its suffix) nor a readable list of audio files "
                    f"({err.problem})"
                ) from None
    _mark_twice(items)
    for item in items:
        item.seconds = 0.0 if item.problem else header_seconds(item.path)
    return items


def _mark_twice(items: list[Item]) -> None:
    """A key given twice (a list line repeated), or one file reached twice (a folder reachable through a symbolic
    link, a file given beside its folder) would be decoded, printed and scored twice: the second is that item's
    error, naming the first."""
    seen = {}
    for item in items:
        if item.problem is not None:
            continue
        names = [("key", item.key)]
        # not named by a list: the file itself is the name
        if item.key == printable(item.path):
            try:
                names.append(("file", os.path.realpath(item.path)))
            except ValueError:  # a name no file can have: its reader says so
                pass
        for name in names:
            if name in seen:
                item.problem = f"{name[0]} {printable(name[1])!r} given twice (first as {seen[name]}): decoded once"
                break
        else:
            seen.update(dict.fromkeys(names, printable(item.path)))
