"""Where a path becomes an input (audio, list, config, checkpoint) or a written file: one rule for all of them.

An input must be a regular file (folders are walked by their readers): a FIFO, a device or a socket would block a
read or never end it. Files are opened without blocking and checked again on the open descriptor, so a file swapped
for a FIFO between the check and the open is refused too. Text read whole is bounded in size and decoded
as UTF-8 with or without a byte-order mark; JSON nested past Python's recursion limit is one more bad input.
Every failure, whatever exception the layer below raises, is a FileError: one line naming the path and the problem.
"""

import errno
import json
import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path

MAX_CONFIG_BYTES = 16 * 2**20  # a config.json is a few KB; tokenizer.json 7 MB
# a list of ten million jsonl lines; not a checkpoint given by mistake, nor /dev/zero
MAX_LIST_BYTES = 1 << 30

READ_CHUNK = 1 << 20  # read_bytes' step: memory follows the file, not the bound

# os.strerror's words would be right but vague where a user mistyped a path.
_OS_PROBLEMS = {
    errno.ENOENT: "no such file or directory",
    errno.ELOOP: "a symbolic link loop",
    errno.ENAMETOOLONG: "file name too long (a path component over 255 bytes)",
    errno.EACCES: "permission denied",
    errno.ENOTDIR: "a path component is not a directory",
    errno.ENXIO: "a socket or device without a reader, not a file",
}
_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def printable(path) -> str:
    """A path (or any text read from a list) as text that prints anywhere: bytes of a name that is not UTF-8 shown
    as \\xNN escapes, a lone surrogate (JSON's "\\ud800") as \\ud800."""
    try:
        data = os.fsencode(path)
    except UnicodeEncodeError:
        data = os.fspath(path).encode("utf-8", "backslashreplace")
    return data.decode("utf-8", "backslashreplace")


class FileError(ValueError):
    """A path we cannot read or write as asked; the message is one line naming the path and the problem."""

    def __init__(self, path, problem: str):
        self.path, self.problem = (
            printable(path)
            if isinstance(path, (str, bytes, os.PathLike))
            else str(path),
            problem,
        )
        super().__init__(" ".join(f"{self.path}: {problem}".split()))


def _a(what: str) -> str:
    return f"{'an' if what[0] in 'aeiou' else 'a'} {what}"


def os_problem(err: OSError | ValueError) -> str:
    """An OSError's words; the ValueError of a name no file can have (a NUL byte, a lone surrogate) likewise."""
    if isinstance(err, UnicodeEncodeError):
        return "not a file name (it holds a lone surrogate, a character no file name can have)"
    if not isinstance(err, OSError):
        return str(err)
    return _OS_PROBLEMS.get(err.errno) or err.strerror or type(err).__name__


def _kind_problem(mode: int, what: str) -> str | None:
    if stat.S_ISDIR(mode):
        return f"is a directory, not {_a(what)}"
    return next(
        (f"{kind}, not {_a(what)}" for test, kind in _KINDS if test(mode)), None
    )


def check_file(path, what: str) -> os.stat_result:
    """The path's stat when it is a regular file; else FileError saying what it is: missing, a directory, a FIFO,
    a device, a symbolic link loop, a name too long, ..."""
    try:
        info = os.stat(path)
    except (OSError, ValueError) as err:  # ValueError: a NUL byte in the name
        raise FileError(path, os_problem(err)) from None
    if problem := _kind_problem(info.st_mode, what):
        raise FileError(path, problem)
    return info


def open_file(path, what: str, max_bytes: int | None = None) -> int:
    """A descriptor open for reading on a regular file of at most max_bytes, checked on the descriptor itself."""
    check_file(path, what)
    try:
        fd = os.open(
            path,
            os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0),
        )
    except (OSError, ValueError) as err:
        raise FileError(path, os_problem(err)) from None
    info = os.fstat(fd)
    problem = _kind_problem(info.st_mode, what)  # swapped since check_file
    if problem is None and max_bytes is not None and info.st_size > max_bytes:
        problem = f"{info.st_size / 2**20:.1f} MiB, more than {_a(what)} may be ({max_bytes / 2**20:.0f} MiB)"
    if problem:
        os.close(fd)
        raise FileError(path, problem)
    return fd


def read_bytes(path, what: str, max_bytes: int) -> bytes:
    """A regular file read whole, at most max_bytes."""
    fd = open_file(path, what, max_bytes)
    chunks, size = [], 0
    try:
        # in chunks: f.read(max_bytes + 1) would allocate all of max_bytes
        with os.fdopen(fd, "rb") as f:
            while size <= max_bytes and (
                chunk := f.read(min(READ_CHUNK, max_bytes + 1 - size))
            ):
                chunks.append(chunk)
                size += len(chunk)
    except OSError as err:
        raise FileError(path, f"cannot read: {os_problem(err)}") from None
    if size > max_bytes:  # it grew since the check
        raise FileError(
            path, f"more than {_a(what)} may be ({max_bytes / 2**20:.0f} MiB)"
        )
    return b"".join(chunks)


def read_text(path, what: str, max_bytes: int) -> str:
    """A text file read whole, bounded; UTF-8 with or without a byte-order mark."""
    data = read_bytes(path, what, max_bytes)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise FileError(
            path, f"not UTF-8 text at byte {err.start}: not {_a(what)}"
        ) from None


def parse_json(text: str, where):
    """json.loads with every failure (bad syntax, an integer of 5000 digits, nesting deeper than Python's recursion
    limit) as one FileError naming `where`."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise FileError(where, f"not valid JSON ({err})") from None
    except RecursionError:
        raise FileError(where, "JSON nested too deeply") from None
    except ValueError as err:
        raise FileError(where, f"not usable JSON ({err})") from None


def read_json(path, what: str, max_bytes: int = MAX_CONFIG_BYTES):
    return parse_json(read_text(path, what, max_bytes), path)


def write_problem(err: BaseException) -> str:
    """What failed in a write: the OSError's words, also when torch (or atomic_write) wraps it in its own error."""
    cause = err
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__context__
    if cause is not None:
        return os_problem(cause)
    return next(
        (line.strip() for line in str(err).splitlines() if line.strip()),
        type(err).__name__,
    )


MIN_FREE_BYTES = 16 * 2**20  # a folder with less free space is full for our outputs


def writable_folder(folder, what: str) -> Path:
    """`folder`, created when missing, once a file was made in it and there is room: FileError otherwise (read
    only, a file in the way, a full disk), before any work whose results would go there."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-check-")
        os.close(fd)
        os.unlink(probe)
        space = os.statvfs(folder)
        free = space.f_bavail * space.f_frsize
    except (OSError, ValueError) as err:
        raise FileError(
            folder, f"cannot write {what} there: {os_problem(err)}"
        ) from None
    if free < MIN_FREE_BYTES:
        raise FileError(
            folder, f"cannot write {what} there: the disk is full ({free} bytes free)"
        )
    return folder


@contextmanager
def atomic_write(path: Path):
    """Yield a binary file that becomes `path` only when written whole: `path.tmp`, synced, renamed over it. Any
    failure (a full disk, an interrupt) removes the .tmp; an OSError, or torch's RuntimeError around one, becomes
    a FileError naming `path`."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, (OSError, RuntimeError)):
            raise FileError(path, f"cannot write: {write_problem(err)}") from None
        raise
