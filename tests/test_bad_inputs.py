"""A corpus of bad inputs (issue 16): each one gets a one-line refusal or is skipped and counted, never a traceback,
a silent no-op or an unbounded cost. The next bad input found belongs here, under the part of the pipeline it hits."""

import hashlib
import http.server
import io
import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

import infer
from conftest import FIXTURE_A
from osum_min.convert import hub
from osum_min import progress
from osum_min.audio import (
    MAX_KERNEL_TAPS,
    SAMPLE_RATE,
    AudioError,
    _kernel_taps,
    _resample_per_output,
    load_audio,
    resample,
)
from osum_min.convert.hub import DownloadError
from osum_min.model.osum import OSUM
from osum_min.progress import Progress
from osum_min.text.tokenizer import Tokenizer
from test_audio import brute_force_resample
from test_hub import local_server
from test_infer import weights_with_tokenizer  # noqa: F401  (a pytest fixture)

ROOT = Path(__file__).resolve().parent.parent
AUDIO = FIXTURE_A / "audio.wav"
PROMPT = "17,230,511,42,901,7,333"
# gcd with 16000 is 1, 1 and 2: exact kernels of 706 M, 178 M and 89 M taps
ODD_RATES = (
    44101,
    11127,
    22254,
)


def tone(rate: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


# ---------------------------------------------------------------- audio: sample rates


@pytest.mark.parametrize("rate", ODD_RATES)
def test_odd_rate_follows_the_windowed_sinc_formula(tmp_path, rate):
    assert (
        _kernel_taps(*(r // math.gcd(rate, SAMPLE_RATE) for r in (rate, SAMPLE_RATE)))
        > MAX_KERNEL_TAPS
    )
    # full-scale white noise
    x = np.random.default_rng(0).uniform(-1, 1, 2000).astype(np.float32)
    y = resample(torch.from_numpy(x), rate, SAMPLE_RATE)
    assert len(y) == math.ceil(len(x) * SAMPLE_RATE / rate)
    outputs = [0, 1, 2, 7, 101, len(y) // 2, len(y) - 2, len(y) - 1]
    exact = brute_force_resample(x.astype(np.float64), rate, SAMPLE_RATE, outputs)
    # float32 kernel and sums; observed <= 1.2e-7
    assert np.abs(y[outputs].numpy() - exact).max() <= 5e-7
    soundfile.write(tmp_path / "tone.wav", tone(rate), rate, subtype="FLOAT")
    wav = load_audio(tmp_path / "tone.wav")
    # a 440 Hz tone stays one, away from the zero padding's ringing
    middle = slice(200, SAMPLE_RATE - 200)
    assert (
        len(wav) == SAMPLE_RATE
        and np.abs(wav[middle].numpy() - tone(SAMPLE_RATE)[middle]).max() <= 2e-3
    )


def test_per_output_resampling_equals_the_polyphase_kernel():
    x = torch.from_numpy(
        np.random.default_rng(1).uniform(-1, 1, (2, 3000)).astype(np.float32)
    )
    for orig, new in ((441, 160), (160, 441), (3, 1)):
        polyphase = resample(x, orig * 100, new * 100)
        assert _kernel_taps(orig, new) <= MAX_KERNEL_TAPS
        # float32 phases: 1.6e-5
        assert (polyphase - _resample_per_output(x, orig, new)).abs().max() <= 3e-5


MEASURE = """
import json, resource, sys, time
import soundfile
from osum_min.audio import load_audio
rates, folder = [int(r) for r in sys.argv[1].split(",")], sys.argv[2]
load_audio(folder + "/warm.wav")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
seconds = {}
for rate in rates:
    start = time.perf_counter()
    load_audio(f"{folder}/{rate}.wav")
    seconds[rate] = time.perf_counter() - start
grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({"seconds": seconds, "peak_rss_growth_mb": grown_mb}))
"""


@pytest.mark.skipif(
    sys.platform != "linux",
    reason="peak memory is read from getrusage's Linux kilobytes",
)
def test_odd_rates_cost_bounded_memory_and_time(tmp_path):
    """Measured in a fresh process (its peak RSS is not yet raised by other tests). Before: 11127 Hz took 7.2 GB and
    28 s for 1 s of audio, 44101 Hz was killed at 19 GB. The bounds are far above what they cost now."""
    soundfile.write(tmp_path / "warm.wav", tone(44100), 44100, subtype="FLOAT")
    for rate in ODD_RATES:
        soundfile.write(
            tmp_path / f"{rate}.wav", tone(rate, seconds=10), rate, subtype="FLOAT"
        )
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, ",".join(map(str, ODD_RATES)), str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    measured = json.loads(done.stdout)
    print(measured)
    assert measured["peak_rss_growth_mb"] <= 200
    assert max(measured["seconds"].values()) <= 5


def write_wav_header_rate(path: Path, rate: int, frames: int = 2000) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.zeros(frames, dtype="<i2").tobytes())


@pytest.mark.parametrize("rate", [1, 999, 384001, 10**7])
def test_implausible_rate_is_refused_in_one_line(tmp_path, rate):
    write_wav_header_rate(tmp_path / "odd.wav", rate)
    with pytest.raises(AudioError) as err:
        load_audio(tmp_path / "odd.wav")
    message = str(err.value)
    assert (
        "\n" not in message
        and str(tmp_path / "odd.wav") in message
        and f"{rate} Hz" in message
    )


def test_edge_rates_are_accepted(tmp_path):
    for rate in (1000, 384000):
        write_wav_header_rate(tmp_path / "edge.wav", rate, frames=rate // 2)
        assert len(load_audio(tmp_path / "edge.wav")) == math.ceil(
            rate // 2 * SAMPLE_RATE / rate
        )


# ---------------------------------------------------------------- infer.py: flags and lists


def run_infer(capsys, *argv) -> tuple[int, list[str], str]:
    """infer.main's exit code (a flag refused by argparse exits through SystemExit), stdout lines, stderr."""
    try:
        code = infer.main([str(a) for a in argv])
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


@pytest.mark.parametrize(
    "flags, message",
    [
        # decoded nothing, exit 0
        (
            ["--batch-size", "-1"],
            "--batch-size must be at least 1",
        ),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--max-new-tokens", "0"], "--max-new-tokens is 0, below 1"),
        (["--beams", "0"], "--beams is 0, below 1"),
        (
            ["--temperature", "0", "--sample"],
            "--temperature is 0.0, below 0.0001 (sampling",
        ),
        (["--top-p", "0", "--sample"], "--top-p is 0.0, not above 0"),
        (["--repetition-penalty", "nan"], "--repetition-penalty is nan, not a finite"),
        (["--top-p", "1.5"], "--top-p is 1.5, above 1"),
        (["--top-k", "-1"], "--top-k is -1, below 0"),
        (["--stream", "--beams", "2"], "--stream prints tokens as they come"),
        (["--device", "gpu"], "not a torch device"),
        pytest.param(
            ["--device", "mps"],
            "--device mps: this torch sees no Apple GPU",
            marks=pytest.mark.skipif(
                torch.backends.mps.is_available(), reason="an Apple GPU is present"
            ),
        ),
        (["--web", "--batch-size", "0"], "--batch-size must be at least 1"),
        # issue 23: each was a traceback (NaN probabilities, an overflowing seed, a device torch cannot load onto)
        (["--sample", "--temperature", "1e-45"], "below 0.0001"),
        (
            ["--sample", "--temperature", "inf"],
            "--temperature is inf, not a finite number",
        ),
        (["--repetition-penalty", "inf"], "--repetition-penalty is inf, not a finite"),
        (
            ["--sample", "--seed", str(10**23)],
            f"--seed is {10**23}, not a whole number from",
        ),
        (
            ["--sample", "--seed", str(-(2**63) - 1)],
            "--seed is -9223372036854775809, not a whole number from",
        ),
        (["--device", "meta"], "--device meta: the model runs on cpu, cuda, mps only"),
        (["--device", "xpu"], "--device xpu: the model runs on cpu, cuda, mps only"),
        (["--web", "--port", "99999999"], "--port must be from 0 to 65535"),
        (
            ["--serve", "--max-upload-mb", "0"],
            "--max-upload-mb must be a finite number above 0, got 0",
        ),
        (
            ["--serve", "--max-upload-mb", "inf"],
            "--max-upload-mb must be a finite number above 0, got inf",
        ),
        (
            ["--serve", "--max-audio-seconds", "nan"],
            "--max-audio-seconds must be a finite number above 0, got nan",
        ),
    ],
)
def test_bad_flag_values_exit_2_in_one_line(capsys, fixture_weights, flags, message):
    code, lines, err = run_infer(
        capsys,
        AUDIO,
        "--weights",
        fixture_weights,
        "--prompt-ids",
        PROMPT,
        "--ids",
        *flags,
    )
    assert code == 2 and lines == []
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_cuda_device_without_cuda_exits_2_in_one_line(
    capsys, fixture_weights, monkeypatch
):
    # a CPU-only torch, also on a GPU machine
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, lines, err = run_infer(
        capsys,
        AUDIO,
        "--weights",
        fixture_weights,
        "--prompt-ids",
        PROMPT,
        "--ids",
        "--device",
        "cuda",
    )
    assert code == 2 and lines == []
    assert (
        len(err.strip().splitlines()) == 1
        and "--device cuda: this torch" in err
        and "no CUDA device" in err
    )


def test_bad_list_lines_are_skipped_counted_and_the_rest_decoded(
    capsys, fixture_weights, tmp_path
):
    listing = tmp_path / "test.jsonl"
    listing.write_text(
        "\n".join(
            [
                json.dumps({"key": "good0", "wav": str(AUDIO)}),
                json.dumps({"key": "bad_wav", "wav": 123}),
                json.dumps({"key": "bad_txt", "wav": str(AUDIO), "txt": 123}),
                json.dumps({"key": "no_wav"}),
                "{not json",
                json.dumps({"key": "good1", "wav": str(AUDIO), "txt": "hello"}),
            ]
        )
        + "\n"
    )
    code, lines, err = run_infer(
        capsys,
        listing,
        "--weights",
        fixture_weights,
        "--prompt-ids",
        PROMPT,
        "--ids",
        "--beams",
        "1",
        "--max-new-tokens",
        "4",
        "--json",
    )
    assert code == 1 and "Traceback" not in err
    records = [json.loads(line) for line in lines]
    assert [r.get("key") for r in records if "error" not in r] == ["good0", "good1"]
    assert [r["file"] for r in records if "error" in r] == [
        f"{listing}:{n}" for n in (2, 3, 4, 5)
    ]
    skipped = [
        line for line in err.splitlines() if line.startswith("infer.py: skipped")
    ]
    assert len(skipped) == 4
    assert (
        '"wav" is 123, not a path' in skipped[0]
        and '"txt" is 123, not text' in skipped[1]
    )
    assert '"wav" is null' in skipped[2] and "not a wenet list line" in skipped[3]


# noqa: F811
def test_the_score_summary_counts_skipped_files(
    capsys, weights_with_tokenizer, tmp_path
):
    listing = tmp_path / "test.jsonl"
    listing.write_text(
        "\n".join(
            [
                json.dumps({"key": "good", "wav": str(AUDIO), "txt": "hello"}),
                json.dumps({"key": "bad_txt", "wav": str(AUDIO), "txt": 123}),
                json.dumps(
                    {"key": "absent", "wav": str(tmp_path / "absent.wav"), "txt": "hi"}
                ),
            ]
        )
    )
    flags = [
        "--weights",
        weights_with_tokenizer,
        "--beams",
        "1",
        "--max-new-tokens",
        "4",
        "--score-only",
    ]
    code, lines, err = run_infer(capsys, listing, *flags)
    # the absent clip's reference is in the score as a deletion; the line without a text has none to count
    assert (
        code == 1
        and "over 2 files" in lines[0]
        and lines[-1].startswith("2 files skipped")
    )
    code, lines, err = run_infer(capsys, listing, *flags, "--json")
    summary = json.loads(lines[-1])["summary"]
    assert (
        summary["skipped"] == 2
        and summary["reference_units"] == 2
        and summary["deletions"] >= 1
    )


def test_a_text_file_that_is_not_an_audio_list_is_one_line(capsys, fixture_weights):
    code, lines, err = run_infer(
        capsys,
        ROOT / "README.md",
        "--weights",
        fixture_weights,
        "--prompt-ids",
        PROMPT,
        "--ids",
    )
    assert code == 2 and lines == []
    assert (
        len(err.strip().splitlines()) == 1
        and "README.md: not a list of audio files" in err
    )


# ---------------------------------------------------------------- prompts

# 105 000 characters: took 12.8 GB and 103 s on the tiny model
LONG_PROMPT = "speech " * 15000


# noqa: F811
def test_a_prompt_beyond_the_model_is_refused_before_decoding(
    capsys, weights_with_tokenizer
):
    start = time.perf_counter()
    code, lines, err = run_infer(
        capsys,
        AUDIO,
        "--weights",
        weights_with_tokenizer,
        "--prompt",
        LONG_PROMPT,
        "--max-new-tokens",
        "16",
    )
    seconds = time.perf_counter() - start
    assert code == 2 and lines == []
    # fixture_a's eod
    errors = [
        line for line in err.splitlines() if not line.startswith("infer.py: warning:")
    ]
    assert (
        len(errors) == 1
        and "this model takes at most 1655 (2048 positions" in errors[0]
    ), err
    assert seconds <= 20  # tokenising and refusing; observed about 1 s (load included)


def test_the_prompt_limit_is_the_positions_left(weights_with_tokenizer):  # noqa: F811
    config = OSUM.from_pretrained(weights_with_tokenizer, device="cpu").config
    # 30 s of speech: 375 + bos + eos
    assert config.prompt_length_problem(2048 - 377 - 400, 400) is None
    assert "at most 1271" in config.prompt_length_problem(2048 - 377 - 400 + 1, 400)


def test_a_max_new_tokens_beyond_the_model_names_the_answers_room(
    capsys, fixture_weights
):
    """It said "this model takes at most -999998329" (issue 23): the room left, less the answer, went negative."""
    code, lines, err = run_infer(
        capsys,
        AUDIO,
        "--weights",
        fixture_weights,
        "--prompt-ids",
        PROMPT,
        "--ids",
        "--max-new-tokens",
        str(10**9),
    )
    # fixture_a's eod
    errors = [
        line for line in err.splitlines() if not line.startswith("infer.py: warning:")
    ]
    assert code == 2 and lines == [] and len(errors) == 1, err
    assert (
        f"max_new_tokens {10**9} does not fit" in errors[0]
        and "at most 1664 new tokens" in errors[0]
    )
    assert "-" not in errors[0].split("at most")[1].split()[0]


def test_the_web_demo_refuses_a_prompt_beyond_the_model(weights_with_tokenizer):  # noqa: F811
    pytest.importorskip(
        "gradio", reason="the web demo's extra is not installed: pip install .[demo]"
    )
    from osum_min.serve.web import build_demo

    model = OSUM.from_pretrained(weights_with_tokenizer, device="cpu")
    demo = build_demo(model, Tokenizer.from_pretrained(weights_with_tokenizer))
    status, *_ = demo(
        str(AUDIO),
        "prompt",
        LONG_PROMPT,
        "",
        1,
        False,
        1.0,
        0,
        1.0,
        1.0,
        16,
        None,
        api_name="transcribe",
    )
    assert (
        status.startswith("**Error:** the prompt is")
        and "this model takes at most 1655" in status
    )


# ---------------------------------------------------------------- convert.py --download: what the hub sends

CHECKPOINT = (FIXTURE_A / "infer.pt").read_bytes()
HTML_ERROR = (
    b"<!DOCTYPE html>\n<html><body><h1>503 Service Unavailable</h1></body></html>\n"
)


class HubHandler(http.server.BaseHTTPRequestHandler):
    """server.routes[path] = (status, headers, body, cut): the body sent with those headers and no Content-Length
    unless given, cut to `cut` bytes; a 'Location' header makes it a redirect."""

    def do_GET(self):
        status, headers, body, cut = self.server.routes[self.path]
        self.server.requests.append(self.path)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body[:cut])
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def hub_server():
    with local_server(HubHandler) as httpd:
        httpd.routes, httpd.requests = {}, []
        yield httpd


def serve(
    server,
    path: str,
    body: bytes,
    cut: int | None = None,
    length: bool = True,
    **headers,
):
    headers = {
        **({"Content-Length": str(len(body[:cut]))} if length else {}),
        **headers,
    }
    server.routes[path] = (200, headers, body, cut)
    return f"{server.url}{path}"


@pytest.mark.parametrize(
    "name, body, cut, length, problem",
    [
        (
            "infer.pt",
            HTML_ERROR,
            None,
            True,
            "the server sent an HTML page, not infer.pt",
        ),
        (
            "infer.pt",
            CHECKPOINT,
            len(CHECKPOINT) // 2,
            False,
            "not a torch checkpoint (a zip archive), or cut short",
        ),
        (
            "infer.pt",
            np.random.default_rng(0).bytes(4096),
            None,
            True,
            "not a torch checkpoint",
        ),
        (
            "tokenizer.json",
            b'{"model": {"vocab": {"a": 0',
            None,
            False,
            "tokenizer.json is not JSON, or cut short",
        ),
        (
            "vocab.json",
            np.random.default_rng(1).bytes(4096),
            None,
            True,
            "vocab.json is not JSON",
        ),
        (
            "merges.txt",
            HTML_ERROR,
            None,
            True,
            "the server sent an HTML page, not merges.txt",
        ),
        (
            "merges.txt",
            b"#version: 0.2\n\xc4\xa0 t\n",
            None,
            False,
            "no size or hash from the server",
        ),
    ],
)
def test_download_never_promotes_a_bad_file(
    hub_server, tmp_path, name, body, cut, length, problem
):
    url = serve(hub_server, f"/{name}", body, cut, length)
    with pytest.raises(DownloadError) as err:
        hub.download(url, tmp_path / name, progress=False)
    message = str(err.value)
    assert "\n" not in message and url in message and problem in message, message
    assert (
        f"deleted {tmp_path / name}.part" in message and list(tmp_path.iterdir()) == []
    )


def test_a_cut_transfer_says_what_to_delete(hub_server, tmp_path):
    hub_server.routes["/infer.pt"] = (
        200,
        {"Content-Length": str(len(CHECKPOINT))},
        CHECKPOINT,
        1000,
    )
    with pytest.raises(DownloadError) as err:
        hub.download(
            f"{hub_server.url}/infer.pt", tmp_path / "infer.pt", progress=False
        )
    part = tmp_path / "infer.pt.part"
    assert "\n" not in str(
        err.value
    ) and f"resume from {part} (delete it to start over)" in str(err.value)
    assert part.stat().st_size == 1000 and not (tmp_path / "infer.pt").exists()


def test_the_hubs_size_and_sha256_are_checked(hub_server, tmp_path):
    """Hugging Face sends the LFS size and sha256 as X-Linked-Size / X-Linked-Etag on its redirect to storage."""
    storage = serve(
        hub_server, "/storage/infer.pt", CHECKPOINT[:-1] + bytes([CHECKPOINT[-1] ^ 1])
    )
    hub_server.routes["/resolve/infer.pt"] = (
        302,
        {
            "Location": storage,
            "Content-Length": "0",
            "X-Linked-Size": str(len(CHECKPOINT)),
            "X-Linked-Etag": f'"{hashlib.sha256(CHECKPOINT).hexdigest()}"',
        },
        b"",
        None,
    )
    with pytest.raises(DownloadError) as err:  # a zip still, same size, one bit flipped
        hub.download(
            f"{hub_server.url}/resolve/infer.pt", tmp_path / "infer.pt", progress=False
        )
    assert "sha256" in str(err.value) and list(tmp_path.iterdir()) == []
    serve(hub_server, "/storage/infer.pt", CHECKPOINT)
    assert (
        hub.download(
            f"{hub_server.url}/resolve/infer.pt", tmp_path / "infer.pt", progress=False
        ).read_bytes()
        == CHECKPOINT
    )


def test_a_bad_file_left_by_an_older_run_is_fetched_again(hub_server, tmp_path):
    (tmp_path / "infer.pt").write_bytes(HTML_ERROR)  # what --download kept before
    url = serve(hub_server, "/infer.pt", CHECKPOINT)
    assert (
        hub.download(url, tmp_path / "infer.pt", progress=False).read_bytes()
        == CHECKPOINT
    )
    assert hub_server.requests == ["/infer.pt"]


def test_a_redirect_loop_is_one_line(hub_server, tmp_path):
    hub_server.routes["/loop"] = (
        302,
        {"Location": "/loop", "Content-Length": "0"},
        b"",
        None,
    )
    with pytest.raises(DownloadError) as err:
        hub.download(f"{hub_server.url}/loop", tmp_path / "infer.pt", progress=False)
    assert "\n" not in str(err.value) and "infinite loop" in str(err.value)


# ---------------------------------------------------------------- the web demo's files


def test_the_web_demo_serves_only_its_clips_and_deletes_uploads_on_close():
    pytest.importorskip(
        "gradio", reason="the web demo's extra is not installed: pip install .[demo]"
    )
    gradio_client = pytest.importorskip(
        "gradio_client", reason="gradio_client is not installed"
    )
    from osum_min.serve.web import build_demo, launch

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    demo = build_demo(None, None, unavailable="no model in this test")
    launch(demo, port=port, examples=[(AUDIO, "asr")], block=False)
    url = f"http://127.0.0.1:{port}"
    try:
        # an example clip
        assert urllib.request.urlopen(f"{url}/gradio_api/file={AUDIO}").status == 200
        # its neighbour in the same folder
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{url}/gradio_api/file={FIXTURE_A / 'infer.pt'}")
        assert refused.value.code == 403
        client = gradio_client.Client(url + "/", verbose=False, download_files=False)
        status, *_ = client.predict(
            gradio_client.handle_file(str(AUDIO)),
            "asr",
            "",
            "",
            1,
            False,
            1.0,
            0,
            1.0,
            1.0,
            16,
            None,
            api_name="/transcribe",
        )
        assert status == "**Error:** no model in this test"
        uploads = set(demo.upload_file_set)
        assert uploads and all(Path(upload).exists() for upload in uploads)
    finally:
        demo.close()
    assert not any(Path(upload).exists() for upload in uploads)


SUBTITLE_FOLDER = """
import tempfile
made, mkdtemp = [], tempfile.mkdtemp
tempfile.mkdtemp = lambda *args, **kwargs: made.append(mkdtemp(*args, **kwargs)) or made[-1]
from osum_min.serve.web import build_demo
demo = build_demo(None, None, unavailable="none")
print(made[0])
"""


def test_the_web_demo_removes_its_subtitle_folder():
    pytest.importorskip(
        "gradio", reason="the web demo's extra is not installed: pip install .[demo]"
    )
    done = subprocess.run(
        [sys.executable, "-c", SUBTITLE_FOLDER],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"},
    )
    assert done.returncode == 0, done.stderr
    folder = Path(done.stdout.strip().splitlines()[-1])
    assert folder.name.startswith("osum_web_") and not folder.exists()


# ---------------------------------------------------------------- progress bars


def test_no_eta_until_the_rate_is_measured(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    bar = Progress(8_000_000, "converting", unit="B", stream=io.StringIO())
    clock[0] += 0.5  # a slow first tensor: 32 KB in half a second would say 02:04
    bar.update(32_000)
    assert bar.line().endswith("eta ?")
    for _ in range(3):
        clock[0] += 0.25
        bar.update(1_000_000)
    # 3.03 MB in 1.25 s: 4.97 MB left at 2.4 MB/s
    assert bar.line().endswith("eta 00:02")
    bar.update(4_968_000)
    assert bar.line().endswith("eta 00:00")


def test_make_corpus_without_espeak_ng_is_one_line_naming_the_install_command(tmp_path):
    """A newcomer without espeak-ng got a 15-line traceback; now one line, before any folder is made."""
    bin_dir = tmp_path / "bin"  # a PATH without espeak-ng
    bin_dir.mkdir()
    done = subprocess.run(
        [
            sys.executable,
            "examples/asr_gender/make_corpus.py",
            "--out",
            str(tmp_path / "c"),
        ],
        cwd=Path(__file__).parent.parent,
        env={**os.environ, "PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr.splitlines() == [
        "make_corpus.py: error: espeak-ng is not installed: apt-get install espeak-ng"
    ]
    assert not (tmp_path / "c").exists()


def test_a_bar_shows_from_its_first_second_not_after_the_first_step(monkeypatch):
    """infer.py on a few files said nothing until the first batch was done (up to a minute)."""
    stream = io.StringIO()
    Progress(3, "files", stream=stream)
    assert stream.getvalue().startswith("files |   0.0% 0/3")


def test_infer_on_one_file_at_a_terminal_shows_loading_and_decoding_at_once(
    capsys, fixture_weights, monkeypatch
):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    lines_at_load = []
    real_load = infer.load
    monkeypatch.setattr(
        infer,
        "load",
        lambda args: lines_at_load.append(capsys.readouterr().err) or real_load(args),
    )
    code = infer.main(
        [
            str(FIXTURE_A / "audio.wav"),
            "--weights",
            str(fixture_weights),
            "--prompt-ids",
            "17,230",
            "--ids",
        ]
        + ["--beams", "1", "--max-new-tokens", "2"]
    )
    err = capsys.readouterr().err
    assert code == 0 and lines_at_load[0].startswith("infer.py: loading ")
    assert err.startswith("files |   0.0% 0/1") and "100.0% 1/1" in err
