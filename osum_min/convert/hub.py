"""Fetch the released OSUM checkpoint and the Qwen2 tokenizer over plain HTTP(S), resumably and verified.

Stdlib only (urllib), because the checkpoint is ~15 GB and a dropped connection must not cost the whole
transfer: bytes land in `DEST.part`, a rerun continues it with a `Range` request, and only a file that passes
its checks is renamed to DEST: the size (ours, else the hub's X-Linked-Size, else Content-Length), the sha256 (ours,
else the hub's X-Linked-Etag) and the content (`content_problem`: an HTML error page served with 200, random bytes
or a body cut short without a length must not become a file every later run reuses). Any failure is one line
naming the URL and what went wrong.
"""

import codecs
import errno
import hashlib
import http.client
import json
import os
import re
import socket
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from osum_min.progress import Progress

DEFAULT_HUB_URL = "https://huggingface.co"
HUB_URL_ENV = "OSUM_HUB_URL"
CHUNK_BYTES = 1 << 20
OFFLINE_ERRNOS = {errno.ENETUNREACH, errno.ENETDOWN, errno.EHOSTUNREACH}
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class DownloadError(ValueError):
    """A download that failed or produced a file we refuse; the message is one line."""


@dataclass(frozen=True)
class HubFile:
    repo: str  # Hugging Face model repository id, "owner/name"
    filename: str
    # bytes; None = unknown, then only the server's Content-Length is checked
    size: int | None = None
    sha256: str | None = None  # hex digest; None = unknown, not checked


OSUM_REPO = "ASLP-lab/OSUM"
QWEN_REPO = "Qwen/Qwen2-7B-Instruct"
CHECKPOINT_FILE = HubFile(OSUM_REPO, "infer.pt")
TOKENIZER_FILES = tuple(
    HubFile(QWEN_REPO, name)
    for name in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json")
)
# Everything `convert.py --download` needs. Sizes and hashes are None because this project was built offline and
# could not read them from the hub; fill them in from the repositories' file listings (the LFS sha256) to have
# every byte verified. Until then a transfer is checked against the server's Content-Length only.
OSUM_FILES = (CHECKPOINT_FILE, *TOKENIZER_FILES)


def hub_base_url(base_url: str | None = None) -> str:
    """The argument, else $OSUM_HUB_URL, else huggingface.co (a mirror or a local server in tests)."""
    return (base_url or os.environ.get(HUB_URL_ENV) or DEFAULT_HUB_URL).rstrip("/")


def file_url(file: HubFile, base_url: str | None = None) -> str:
    return f"{hub_base_url(base_url)}/{file.repo}/resolve/main/{file.filename}"


def fetch_release(
    out_dir, base_url: str | None = None, progress: bool = True
) -> tuple[Path, Path]:
    """Download OSUM_FILES to OUT_DIR/<repo id>/<filename>; returns (checkpoint path, tokenizer directory)."""
    out_dir = Path(out_dir)
    for file in OSUM_FILES:
        download(
            file_url(file, base_url),
            out_dir / file.repo / file.filename,
            expected_size=file.size,
            sha256=file.sha256,
            progress=progress,
        )
    return (
        out_dir / CHECKPOINT_FILE.repo / CHECKPOINT_FILE.filename,
        out_dir / QWEN_REPO,
    )


def download(
    url: str,
    dest_path,
    *,
    expected_size: int | None = None,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 30,
) -> Path:
    """Download URL to DEST_PATH, resuming DEST.part; skips the transfer if DEST already passes the checks."""
    dest = Path(dest_path)
    if (
        dest.exists()
        and (expected_size is None or dest.stat().st_size == expected_size)
        and (sha256 is None or _sha256_of(dest) == sha256.lower())
        and content_problem(dest, dest.name) is None
    ):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset > expected_size:
        part.unlink()
        offset = 0
    if expected_size is None or offset < expected_size:
        total, hub_sha256 = _transfer(
            url, part, offset, expected_size, progress, timeout
        )
    else:
        # a previous run got every byte but stopped before verifying
        total, hub_sha256 = (
            expected_size,
            None,
        )
    _verify(url, part, total, sha256 or hub_sha256)
    if problem := content_problem(part, dest.name):
        part.unlink()
        raise DownloadError(f"{url}: {problem}; deleted {part}")
    if (
        total is None
        and sha256 is None
        and hub_sha256 is None
        and dest.suffix not in PROVEN_COMPLETE
    ):
        part.unlink()
        raise DownloadError(
            f"{url}: no size or hash from the server to check {dest.name} against, and its content "
            f"cannot show it is complete; deleted {part}"
        )
    os.replace(part, dest)
    return dest


class _HubMetadata(urllib.request.HTTPRedirectHandler):
    """Keeps the X-Linked-Size and X-Linked-Etag (the LFS sha256) that the Hugging Face hub sends on its redirect
    to the file's storage, where urllib would drop them."""

    def __init__(self):
        self.linked = {}

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.linked |= {
            k.lower(): v
            for k, v in headers.items()
            if k.lower().startswith("x-linked-")
        }
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def hub_size_and_sha256(headers: dict) -> tuple[int | None, str | None]:
    """The full file's size and sha256 from the hub's X-Linked-* headers (lower-case names), where given."""
    size = headers.get("x-linked-size", "")
    digest = (
        headers.get("x-linked-etag", "").strip().removeprefix("W/").strip('"').lower()
    )
    return (int(size) if size.isdigit() else None), (
        digest if SHA256_HEX.match(digest) else None
    )


# Suffixes whose content check shows the file is whole (a zip's central directory is at its end, JSON must close).
PROVEN_COMPLETE = {".pt", ".json"}


def content_problem(path: Path, name: str) -> str | None:
    """Why the bytes at PATH cannot be the file NAME (None if they can): torch checkpoints are zip archives, JSON
    must parse, and no file of the release is an HTML page (what a proxy or hub error page served with 200 is)."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html")):
        return f"the server sent an HTML page, not {name}"
    if name.endswith(".pt") and not zipfile.is_zipfile(path):
        return f"not a torch checkpoint (a zip archive), or cut short: starts with {head[:8]!r}"
    if name.endswith(".json"):
        try:
            json.loads(path.read_bytes())
        except ValueError as err:
            return f"{name} is not JSON, or cut short ({type(err).__name__}: {str(err)[:60]})"
    if name.endswith(".txt"):
        try:
            # a character cut at byte 512 is fine
            codecs.getincrementaldecoder("utf-8")().decode(head)
        except UnicodeDecodeError:
            return f"{name} is not UTF-8 text: starts with {head[:8]!r}"
    return None


def _transfer(
    url: str,
    part: Path,
    offset: int,
    expected_size: int | None,
    progress: bool,
    timeout: float,
) -> tuple[int | None, str | None]:
    """Append the missing bytes to PART (or rewrite it if the server ignores Range); returns the full size if known
    and the hub's sha256 if given."""
    response, linked = _open(url, offset, timeout)
    if response is None:  # 416: what we hold is not a prefix the server can continue
        part.unlink()
        offset = 0
        response, linked = _open(url, 0, timeout)
    hub_size, hub_sha256 = hub_size_and_sha256(
        linked | {k.lower(): v for k, v in response.headers.items()}
    )
    expected_size = expected_size if expected_size is not None else hub_size
    with response:
        if response.status != 206:
            offset = 0  # the server sent the whole file: start over rather than append it to the prefix
        elif not response.headers.get("Content-Range", "").startswith(
            f"bytes {offset}-"
        ):
            raise DownloadError(
                f"{url}: asked for bytes from {offset}, server sent "
                f"Content-Range {response.headers.get('Content-Range')!r}"
            )
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else expected_size
        if expected_size is not None and total != expected_size:
            raise DownloadError(
                f"{url}: server reports {total} bytes, expected {expected_size}"
            )
        bar = (
            Progress(total, part.name.removesuffix(".part"), unit="B", initial=offset)
            if progress
            else None
        )
        try:
            with open(part, "ab" if offset else "wb") as out:
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    if bar:
                        bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as err:
            raise DownloadError(
                f"{url}: transfer interrupted after {part.stat().st_size} bytes "
                f"({type(err).__name__}: {err}); run again to resume from {part} "
                f"(delete it to start over)"
            ) from None
        finally:
            if bar:
                bar.close()
    return total, hub_sha256


def _open(url: str, offset: int, timeout: float):
    """The server's response to a GET from OFFSET (None if it refuses the range: HTTP 416) and the X-Linked-*
    headers of the redirects on the way."""
    headers = {
        "User-Agent": "osum-min",
        **({"Range": f"bytes={offset}-"} if offset else {}),
    }
    metadata = _HubMetadata()
    try:
        response = urllib.request.build_opener(metadata).open(
            urllib.request.Request(url, headers=headers), timeout=timeout
        )
        return response, metadata.linked
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            return None, metadata.linked
        raise DownloadError(
            f"{url}: HTTP {err.code} {' '.join(str(err.reason).split())}"
        ) from None
    except urllib.error.URLError as err:
        raise DownloadError(f"{url}: {network_failure(url, err.reason)}") from None
    # timeouts and resets that urllib does not wrap
    except (
        OSError,
        http.client.HTTPException,
    ) as err:
        raise DownloadError(f"{url}: {network_failure(url, err)}") from None


def network_failure(url: str, reason) -> str:
    """Say which step failed, and that the machine seems offline when the failure looks like it."""
    host = urlsplit(url).netloc
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve host {host!r} ({reason.strerror}); the machine seems offline"
    if isinstance(reason, ConnectionRefusedError):
        return f"connection to {host} refused; the server is down or the machine is offline"
    if isinstance(reason, TimeoutError):
        return f"no answer from {host} (timed out); the machine seems offline"
    if isinstance(reason, OSError) and reason.errno in OFFLINE_ERRNOS:
        return f"cannot reach {host} ({reason.strerror}); the machine seems offline"
    return f"cannot reach {host} ({reason})"


def _verify(url: str, part: Path, total: int | None, sha256: str | None) -> None:
    """Size first (a short file is kept for resuming), then the hash (a wrong file is deleted)."""
    size = part.stat().st_size
    if total is not None and size < total:
        raise DownloadError(
            f"{url}: connection closed after {size} of {total} bytes; run again to resume from {part} "
            f"(delete it to start over)"
        )
    if total is not None and size > total:
        part.unlink()
        raise DownloadError(
            f"{url}: got {size} bytes, expected {total}; deleted {part}"
        )
    if sha256 is not None and (actual := _sha256_of(part)) != sha256.lower():
        part.unlink()
        raise DownloadError(
            f"{url}: sha256 {actual[:16]}... does not match the expected {sha256[:16]}...; "
            f"corrupt download deleted ({part})"
        )


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
