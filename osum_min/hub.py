"""Fetch the released OSUM checkpoint and the Qwen2 tokenizer over plain HTTP(S), resumably and verified.

Stdlib only (urllib), because the checkpoint is ~15 GB and a dropped connection must not cost the whole
transfer: bytes land in `DEST.part`, a rerun continues it with a `Range` request, and only a file that passes
its size and sha256 checks is renamed to DEST. Any failure is one line naming the URL and what went wrong.
"""
import errno
import hashlib
import http.client
import os
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from osum_min.progress import Progress

DEFAULT_HUB_URL = "https://huggingface.co"
HUB_URL_ENV = "OSUM_HUB_URL"
CHUNK_BYTES = 1 << 20
OFFLINE_ERRNOS = {errno.ENETUNREACH, errno.ENETDOWN, errno.EHOSTUNREACH}


class DownloadError(ValueError):
    """A download that failed or produced a file we refuse; the message is one line."""


@dataclass(frozen=True)
class HubFile:
    repo: str  # Hugging Face model repository id, "owner/name"
    filename: str
    size: int | None = None  # bytes; None = unknown, then only the server's Content-Length is checked
    sha256: str | None = None  # hex digest; None = unknown, not checked


OSUM_REPO = "ASLP-lab/OSUM"
QWEN_REPO = "Qwen/Qwen2-7B-Instruct"
CHECKPOINT_FILE = HubFile(OSUM_REPO, "infer.pt")
TOKENIZER_FILES = tuple(HubFile(QWEN_REPO, name)
                        for name in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"))
# Everything `convert.py --download` needs. Sizes and hashes are None because this project was built offline and
# could not read them from the hub; fill them in from the repositories' file listings (the LFS sha256) to have
# every byte verified. Until then a transfer is checked against the server's Content-Length only.
OSUM_FILES = (CHECKPOINT_FILE, *TOKENIZER_FILES)


def hub_base_url(base_url: str | None = None) -> str:
    """The argument, else $OSUM_HUB_URL, else huggingface.co (a mirror or a local server in tests)."""
    return (base_url or os.environ.get(HUB_URL_ENV) or DEFAULT_HUB_URL).rstrip("/")


def file_url(file: HubFile, base_url: str | None = None) -> str:
    return f"{hub_base_url(base_url)}/{file.repo}/resolve/main/{file.filename}"


def fetch_release(out_dir, base_url: str | None = None, progress: bool = True) -> tuple[Path, Path]:
    """Download OSUM_FILES to OUT_DIR/<repo id>/<filename>; returns (checkpoint path, tokenizer directory)."""
    out_dir = Path(out_dir)
    for file in OSUM_FILES:
        download(file_url(file, base_url), out_dir / file.repo / file.filename,
                 expected_size=file.size, sha256=file.sha256, progress=progress)
    return out_dir / CHECKPOINT_FILE.repo / CHECKPOINT_FILE.filename, out_dir / QWEN_REPO


def download(url: str, dest_path, *, expected_size: int | None = None, sha256: str | None = None,
             progress: bool = True, timeout: float = 30) -> Path:
    """Download URL to DEST_PATH, resuming DEST.part; skips the transfer if DEST already passes the checks."""
    dest = Path(dest_path)
    if dest.exists() and (expected_size is None or dest.stat().st_size == expected_size) \
            and (sha256 is None or _sha256_of(dest) == sha256.lower()):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset > expected_size:
        part.unlink()
        offset = 0
    if expected_size is None or offset < expected_size:
        total = _transfer(url, part, offset, expected_size, progress, timeout)
    else:
        total = expected_size  # a previous run got every byte but stopped before verifying
    _verify(url, part, total, sha256)
    os.replace(part, dest)
    return dest


def _transfer(url: str, part: Path, offset: int, expected_size: int | None, progress: bool,
              timeout: float) -> int | None:
    """Append the missing bytes to PART (or rewrite it if the server ignores Range); returns the full size if known."""
    response = _open(url, offset, timeout)
    if response is None:  # 416: what we hold is not a prefix the server can continue
        part.unlink()
        offset = 0
        response = _open(url, 0, timeout)
    with response:
        if response.status != 206:
            offset = 0  # the server sent the whole file: start over rather than append it to the prefix
        elif not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
            raise DownloadError(f"{url}: asked for bytes from {offset}, server sent "
                                f"Content-Range {response.headers.get('Content-Range')!r}")
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else expected_size
        if expected_size is not None and total != expected_size:
            raise DownloadError(f"{url}: server reports {total} bytes, expected {expected_size}")
        bar = Progress(total, part.name.removesuffix(".part"), unit="B", initial=offset) if progress else None
        try:
            with open(part, "ab" if offset else "wb") as out:
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    if bar:
                        bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as err:
            raise DownloadError(f"{url}: transfer interrupted after {part.stat().st_size} bytes "
                                f"({type(err).__name__}: {err}); run again to resume from {part}") from None
        finally:
            if bar:
                bar.close()
    return total


def _open(url: str, offset: int, timeout: float):
    """The server's response to a GET from OFFSET; None if it refuses the range (HTTP 416)."""
    headers = {"User-Agent": "osum-min", **({"Range": f"bytes={offset}-"} if offset else {})}
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            return None
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        raise DownloadError(f"{url}: {network_failure(url, err.reason)}") from None
    except (OSError, http.client.HTTPException) as err:  # timeouts and resets that urllib does not wrap
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
        raise DownloadError(f"{url}: connection closed after {size} of {total} bytes; run again to resume from {part}")
    if total is not None and size > total:
        part.unlink()
        raise DownloadError(f"{url}: got {size} bytes, expected {total}; deleted {part}")
    if sha256 is not None and (actual := _sha256_of(part)) != sha256.lower():
        part.unlink()
        raise DownloadError(f"{url}: sha256 {actual[:16]}... does not match the expected {sha256[:16]}...; "
                            f"corrupt download deleted ({part})")


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
