"""osum_min.convert.hub against a local HTTP server on 127.0.0.1: resume, refusal of corrupt bytes, offline errors.

The server serves the fixture checkpoint (10.8 MB) and can cut a transfer short, ignore Range, or serve other bytes,
so every path of `download` runs for real over a socket; nothing leaves the machine.
"""

import contextlib
import hashlib
import http.server
import socket
import threading
from pathlib import Path

import pytest

from osum_min.convert import hub
from osum_min.convert.hub import DownloadError, download, fetch_release

PAYLOAD = (Path(__file__).parent / "fixtures" / "fixture_a" / "infer.pt").read_bytes()
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class FileHandler(http.server.BaseHTTPRequestHandler):
    """GET of server.files[path], honouring `Range: bytes=N-` unless server.ignore_range; server.cut_after
    makes the first request stop after that many bytes and close the connection."""

    def do_GET(self):
        server = self.server
        range_header = self.headers.get("Range")
        server.requests.append((self.path, range_header))
        body = server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = (
            int(range_header.removeprefix("bytes=").rstrip("-"))
            if range_header and not server.ignore_range
            else 0
        )
        if start >= len(body) and start:
            self.send_error(416)
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header(
                "Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}"
            )
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        cut, server.cut_after = server.cut_after, None
        self.wfile.write(body[start:] if cut is None else body[start : start + cut])
        self.close_connection = True

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def local_server(handler):
    """HANDLER served on 127.0.0.1 (a free port, `server.url`) from a thread, stopped on leaving."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)
    assert not thread.is_alive()


@pytest.fixture
def server():
    with local_server(FileHandler) as httpd:
        httpd.files, httpd.requests, httpd.cut_after, httpd.ignore_range = (
            {"/infer.pt": PAYLOAD},
            [],
            None,
            False,
        )
        yield httpd


def assert_one_line(err: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_full_download_checks_size_and_hash(server, tmp_path, capsys):
    dest = download(
        f"{server.url}/infer.pt",
        tmp_path / "infer.pt",
        expected_size=len(PAYLOAD),
        sha256=PAYLOAD_SHA,
    )
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == PAYLOAD_SHA
    assert not (tmp_path / "infer.pt.part").exists()
    assert "100.0%" in capsys.readouterr().err  # the progress bar ran to the end
    download(
        f"{server.url}/infer.pt", dest, expected_size=len(PAYLOAD), sha256=PAYLOAD_SHA
    )
    assert len(server.requests) == 1  # a verified file is not fetched again


def test_cut_transfer_resumes_from_part_file(server, tmp_path):
    half = len(PAYLOAD) // 2
    server.cut_after = half
    url, dest = f"{server.url}/infer.pt", tmp_path / "infer.pt"
    with pytest.raises(DownloadError) as err:
        download(url, dest, sha256=PAYLOAD_SHA, progress=False)
    assert_one_line(err, url, f"{half} of {len(PAYLOAD)} bytes", "resume")
    assert (tmp_path / "infer.pt.part").stat().st_size == half and not dest.exists()

    download(url, dest, sha256=PAYLOAD_SHA, progress=False)
    assert server.requests[-1] == ("/infer.pt", f"bytes={half}-")
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == PAYLOAD_SHA


def test_corrupt_file_is_refused_and_deleted(server, tmp_path):
    # same size, last bit flipped
    server.files["/infer.pt"] = PAYLOAD[:-1] + bytes([PAYLOAD[-1] ^ 1])
    url, dest = f"{server.url}/infer.pt", tmp_path / "infer.pt"
    with pytest.raises(DownloadError) as err:
        download(
            url, dest, expected_size=len(PAYLOAD), sha256=PAYLOAD_SHA, progress=False
        )
    assert_one_line(err, url, "sha256", "corrupt")
    assert list(tmp_path.iterdir()) == []


def test_server_without_range_support_restarts_cleanly(server, tmp_path):
    server.ignore_range = True
    stale = b"stale prefix that must not survive"
    (tmp_path / "infer.pt.part").write_bytes(stale)
    dest = download(
        f"{server.url}/infer.pt",
        tmp_path / "infer.pt",
        sha256=PAYLOAD_SHA,
        progress=False,
    )
    # it asked to resume, got a 200, and started over
    assert server.requests == [("/infer.pt", f"bytes={len(stale)}-")]
    assert dest.read_bytes() == PAYLOAD


def test_complete_part_file_past_the_end_starts_over(server, tmp_path):
    # longer than the file: the server answers 416
    (tmp_path / "infer.pt.part").write_bytes(PAYLOAD + b"junk")
    dest = download(
        f"{server.url}/infer.pt",
        tmp_path / "infer.pt",
        sha256=PAYLOAD_SHA,
        progress=False,
    )
    assert [r for _, r in server.requests] == [f"bytes={len(PAYLOAD) + 4}-", None]
    assert dest.read_bytes() == PAYLOAD


def test_closed_port_gives_one_line_error(tmp_path):
    # a port that was free a moment ago and has no listener now
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/infer.pt"
    with pytest.raises(DownloadError) as err:
        download(url, tmp_path / "infer.pt", progress=False, timeout=5)
    assert_one_line(err, url, "refused", "offline")
    assert list(tmp_path.iterdir()) == []


def test_unresolvable_host_says_offline():
    message = hub.network_failure(
        "https://huggingface.co/x",
        socket.gaierror(-3, "Temporary failure in name resolution"),
    )
    assert "huggingface.co" in message and "seems offline" in message


def test_http_404_gives_one_line_error(server, tmp_path):
    url = f"{server.url}/missing.pt"
    with pytest.raises(DownloadError) as err:
        download(url, tmp_path / "missing.pt", progress=False)
    assert_one_line(err, url, "HTTP 404")


def test_fetch_release_uses_env_override(server, tmp_path, monkeypatch):
    # valid files
    tokenizer_bytes = {
        f.filename: f'{{"fake": "{f.filename}"}}'.encode() for f in hub.TOKENIZER_FILES
    }
    server.files = {"/ASLP-lab/OSUM/resolve/main/infer.pt": PAYLOAD}
    server.files |= {
        f"/Qwen/Qwen2-7B-Instruct/resolve/main/{name}": body
        for name, body in tokenizer_bytes.items()
    }
    monkeypatch.setenv(hub.HUB_URL_ENV, server.url + "/")
    checkpoint, tokenizer_dir = fetch_release(tmp_path / "download", progress=False)
    assert checkpoint == tmp_path / "download" / "ASLP-lab" / "OSUM" / "infer.pt"
    assert checkpoint.read_bytes() == PAYLOAD
    assert {p.name: p.read_bytes() for p in tokenizer_dir.iterdir()} == tokenizer_bytes
    assert sorted(path for path, _ in server.requests) == sorted(server.files)
