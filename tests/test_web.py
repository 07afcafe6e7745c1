"""The web demo on fixture_a's weights: through gradio_client the page returns the ids of `model.generate` and of
infer.py for the same file and settings, a corrupt upload answers with its error and the next request still works,
parsed fields (labels, timed words, SRT) reach the page, and headless Chromium uploads, runs and reads the result.

The server is `python infer.py --web` in a subprocess on 127.0.0.1.
"""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile

import infer
from conftest import FIXTURE_A, ROOT
from osum_min.audio import SAMPLE_RATE, load_audio, log_mel, pad_features
from osum_min.model.osum import OSUM
from osum_min.text.tokenizer import Tokenizer
from test_infer import weights_with_tokenizer  # noqa: F401  (a fixture: the tiny model with a byte tokenizer)

gradio = pytest.importorskip(
    "gradio", reason="the web demo's extra is not installed: pip install .[demo]"
)
gradio_client = pytest.importorskip(
    "gradio_client", reason="gradio_client is not installed"
)
from osum_min.serve.web import DemoUnavailable, build_demo  # noqa: E402

AUDIO = FIXTURE_A / "audio.wav"
PROMPT_IDS = [17, 230, 511, 42, 901, 7, 333]
GREEDY_16 = {
    "beams": 1,
    "sample": False,
    "temperature": 1.0,
    "top_k": 0,
    "top_p": 1.0,
    "repetition_penalty": 1.0,
    "max_new_tokens": 16,
}
ARTIFACTS = ROOT / "tests" / ".artifacts"
START_TIMEOUT_S = 120
REQUEST_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(fixture_weights):
    """`infer.py --web` on the fixture weights (no tokenizer: the debugging mode); yields its URL, then stops it."""
    port = free_port()
    command = [
        sys.executable,
        str(ROOT / "infer.py"),
        "--web",
        "--weights",
        str(fixture_weights),
        "--port",
        str(port),
        "--device",
        "cpu",
    ]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    pytest.fail(
                        f"the web server did not start: {log.read().decode(errors='replace')[-2000:]}"
                    )
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def client(server):
    return gradio_client.Client(server, verbose=False, download_files=False)


def transcribe(client, audio, **settings) -> tuple:
    """status, text, parsed, words, srt, ids, record"""
    job = client.submit(
        gradio_client.handle_file(str(audio)),
        api_name="/transcribe",
        prompt_ids_text=",".join(map(str, PROMPT_IDS)),
        seed=None,
        **settings,
    )
    return job.result(timeout=REQUEST_TIMEOUT_S)


def test_page_ids_equal_model_generate_infer_and_the_original(
    client, fixture_weights, expected, capsys
):
    status, text, _, _, _, ids, record = transcribe(client, AUDIO, **GREEDY_16)
    page_ids = [int(token) for token in ids.split()]
    assert page_ids == expected["generate_greedy_ids"].tolist()
    assert (
        record["ids"] == page_ids
        and record["prompt_ids"] == PROMPT_IDS
        and "real-time factor" in status
    )

    model = OSUM.from_pretrained(fixture_weights, device="cpu")
    mel, lens = pad_features([log_mel(load_audio(AUDIO))])
    [model_ids] = model.generate(
        mel, lens, [PROMPT_IDS], max_new_tokens=16, num_beams=1, repetition_penalty=1.0
    )
    assert page_ids == model_ids
    assert (
        infer.main(
            [
                str(AUDIO),
                "--weights",
                str(fixture_weights),
                "--prompt-ids",
                ",".join(map(str, PROMPT_IDS)),
                "--ids",
                "--beams",
                "1",
                "--repetition-penalty",
                "1.0",
                "--max-new-tokens",
                "16",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.split() == ids.split()


def test_page_defaults_are_infer_defaults(client, expected):
    """Only max_new_tokens set: the folded settings default to beam 4, repetition penalty 1.05, no sampling."""
    _, _, _, _, _, ids, _ = transcribe(client, AUDIO, max_new_tokens=16)
    assert [int(token) for token in ids.split()] == expected[
        "generate_beam4_rep1.05_ids"
    ].tolist()


def test_corrupt_upload_is_a_message_and_the_server_keeps_serving(
    client, tmp_path, expected
):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio" * 8)
    status, text, _, _, _, ids, _ = transcribe(client, corrupt, **GREEDY_16)
    assert (
        status.startswith("**Error:** corrupt.wav: not a readable audio file")
        and ids == ""
        and text == ""
    )
    assert "Traceback" not in status
    _, _, _, _, _, ids, _ = transcribe(client, AUDIO, **GREEDY_16)
    assert [int(token) for token in ids.split()] == expected[
        "generate_greedy_ids"
    ].tolist()


def test_long_audio_is_windowed_like_infer(fixture_weights, tmp_path, capsys):
    """40 s of speech and pauses: two windows, with the same cut and the same ids per window as infer.py --json."""
    speech = load_audio(AUDIO).numpy()
    pause = np.zeros(SAMPLE_RATE, dtype=np.float32)
    long_audio = tmp_path / "long.wav"
    soundfile.write(
        long_audio,
        np.concatenate([speech, pause] * 11)[: 40 * SAMPLE_RATE],
        SAMPLE_RATE,
    )
    demo = build_demo(OSUM.from_pretrained(fixture_weights, device="cpu"), None)
    status, *_, record = demo(
        str(long_audio),
        "asr",
        "",
        ",".join(map(str, PROMPT_IDS)),
        *GREEDY_16.values(),
        None,
        api_name="transcribe",
    )
    assert "in 2 windows" in status
    assert (
        infer.main(
            [
                str(long_audio),
                "--weights",
                str(fixture_weights),
                "--json",
                "--prompt-ids",
                ",".join(map(str, PROMPT_IDS)),
                "--ids",
                "--beams",
                "1",
                "--repetition-penalty",
                "1.0",
                "--max-new-tokens",
                "16",
            ]
        )
        == 0
    )
    cli = json.loads(capsys.readouterr().out)
    page = record.model_dump()
    assert page["windows"] == cli["windows"] and len(page["windows"]) == 2
    assert page["ids"] == cli["ids"] and page["ids"][0] != page["ids"][1]


class ScriptedModel:
    """The fixture model's config with a fixed answer, so the page's parsed fields can be checked exactly."""

    def __init__(self, model: OSUM, answer: list[int]):
        self.config, self.answer = model.config, answer

    def generate(self, mel, mel_lens, prompt_ids, return_scores=False, **settings):
        ids = [self.answer] * len(mel)
        return (ids, [0.0] * len(ids)) if return_scores else ids


def run_page(demo, task: str, audio=AUDIO, prompt_ids: str = "") -> list:
    """The page's inputs with greedy decoding of 16 tokens (audio None: no clip)."""
    return demo(
        None if audio is None else str(audio),
        task,
        "",
        prompt_ids,
        *GREEDY_16.values(),
        None,
        api_name="transcribe",
    )


def test_labels_and_timed_words_reach_the_page(weights_with_tokenizer):  # noqa: F811
    tokenizer = Tokenizer.from_pretrained(weights_with_tokenizer)
    model = OSUM.from_pretrained(weights_with_tokenizer, device="cpu")
    answer = lambda text: tokenizer.encode(text) + [tokenizer.eod_id]  # noqa: E731

    demo = build_demo(ScriptedModel(model, answer("hello<happy>")), tokenizer)
    status, text, parsed, *_ = run_page(demo, "ser")
    assert (
        text == "hello<happy>"
        and "Error" not in status
        and "Parser notes" not in status
    )
    assert [(item["token"], item["class_or_confidence"]) for item in parsed] == [
        ("hello", None),
        ("happy", "emotion"),
    ]

    demo = build_demo(ScriptedModel(model, answer("hello<glad>")), tokenizer)
    _, _, parsed, words, srt, *_ = run_page(demo, "ser")
    assert not words["visible"] and not srt["visible"]
    assert (
        parsed[-1]["class_or_confidence"] == "emotion (unknown)"
        and parsed[-1]["token"] == "glad"
    )

    demo = build_demo(
        ScriptedModel(model, answer("hello<0.1, 0.5> world<0.6, 0.9>")), tokenizer
    )
    status, _, parsed, words, srt, _, record = run_page(demo, "srwt")
    assert words["visible"] and srt["visible"]  # shown for srwt only
    assert words["value"]["data"] == [["hello", 0.1, 0.5], ["world", 0.6, 0.9]]
    assert (
        Path(srt["value"]).read_text()
        == "1\n00:00:00,100 --> 00:00:00,900\nhello world\n"
    )
    assert record.model_dump()["words"] == [
        {"text": "hello", "start": 0.1, "end": 0.5},
        {"text": "world", "start": 0.6, "end": 0.9},
    ]


def test_missing_weights_and_missing_input_are_messages(weights_with_tokenizer):  # noqa: F811
    status, *_ = run_page(
        build_demo(None, None, unavailable="cannot load nowhere/: no config.json"),
        "asr",
    )
    assert status == "**Error:** cannot load nowhere/: no config.json"
    demo = build_demo(OSUM.from_pretrained(weights_with_tokenizer, device="cpu"), None)
    status, *_ = run_page(demo, "asr")
    assert status.startswith("**Error:** this model has no tokenizer")
    status, *_ = run_page(demo, "asr", None, prompt_ids="1,2")
    assert status.startswith("**Error:** no audio")
    status, *_ = run_page(demo, "asr", AUDIO, prompt_ids="1,x")
    assert status == "**Error:** prompt ids '1,x': expected comma-separated integers"


def test_missing_gradio_is_a_one_line_hint(monkeypatch):
    # `import gradio` now raises ImportError
    monkeypatch.setitem(sys.modules, "gradio", None)
    with pytest.raises(
        DemoUnavailable, match=r"^the web demo needs gradio: pip install \.\[demo\]$"
    ):
        build_demo(None, None)


@contextlib.contextmanager
def page_with_audio(url: str, screenshot_name: str):
    """Headless Chromium on `url` with the fixture audio uploaded; yields (driver, wait, By); on leaving, saves a
    screenshot to tests/.artifacts/ and closes the browser."""
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed"
    )
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not browser or not driver_path:
        pytest.skip(
            "headless Chromium needs Debian's chromium and chromium-driver (apt-get install chromium "
            "chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    profile = tempfile.mkdtemp(prefix="osum_web_chromium_")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1400,1600",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(
        service=webdriver.ChromeService(driver_path), options=options
    )
    try:
        driver.set_page_load_timeout(60)
        driver.get(url)
        wait = WebDriverWait(driver, REQUEST_TIMEOUT_S)
        wait.until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#audio input[type=file]")
        )
        driver.find_element(By.CSS_SELECTOR, "#audio input[type=file]").send_keys(
            str(AUDIO)
        )
        # the player replaced it
        wait.until(
            lambda d: not d.find_elements(By.CSS_SELECTOR, "#audio input[type=file]")
        )
        yield driver, wait, By
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / screenshot_name))
        print(f"screenshot: {ARTIFACTS / screenshot_name}")
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_browser_uploads_runs_and_reads_the_result(server, client):
    with page_with_audio(server, "web_demo.png") as (driver, wait, By):
        driver.find_element(By.CSS_SELECTOR, "#prompt_ids textarea").send_keys(
            ",".join(map(str, PROMPT_IDS))
        )
        driver.find_element(By.CSS_SELECTOR, "#run").click()
        wait.until(
            lambda d: d.find_element(By.CSS_SELECTOR, "#ids textarea").get_property(
                "value"
            )
        )
        page_ids = driver.find_element(By.CSS_SELECTOR, "#ids textarea").get_property(
            "value"
        )
        status = driver.find_element(By.CSS_SELECTOR, "#status").text
    # The page's default decoding (beam 4, penalty 1.05, 400 new tokens) through the API gives the same ids.
    _, _, _, _, _, api_ids, _ = transcribe(client, AUDIO)
    assert page_ids.split() == api_ids.split() and len(page_ids.split()) > 0
    assert "real-time factor" in status


def test_browser_shows_timed_words_and_subtitles(weights_with_tokenizer):  # noqa: F811
    """A tokenizer-equipped page, task chosen in the dropdown: the words table and the SRT file are on the page."""
    from osum_min.serve.web import launch

    tokenizer = Tokenizer.from_pretrained(weights_with_tokenizer)
    model = OSUM.from_pretrained(weights_with_tokenizer, device="cpu")
    answer = tokenizer.encode("hello<0.1, 0.5> world<0.6, 0.9>") + [tokenizer.eod_id]
    demo = build_demo(ScriptedModel(model, answer), tokenizer)
    _, url, _ = launch(demo, port=free_port(), block=False)
    try:
        with page_with_audio(url, "web_demo_srwt.png") as (driver, wait, By):
            driver.find_element(By.CSS_SELECTOR, "#task input").click()
            wait.until(
                lambda d: [
                    o
                    for o in d.find_elements(By.CSS_SELECTOR, "#task li[role=option]")
                    if o.text.startswith("srwt")
                ]
            )[0].click()
            driver.find_element(By.CSS_SELECTOR, "#run").click()
            wait.until(
                lambda d: (
                    "audio.srt"
                    in d.find_element(By.CSS_SELECTOR, "#srt").text.replace("\n", "")
                )
            )
            table = driver.find_element(By.CSS_SELECTOR, "#words").text.split()
            parsed = driver.find_element(By.CSS_SELECTOR, "#parsed").text
    finally:
        demo.close()
    # after the title and headers
    assert table[-6:] == [
        "hello",
        "0.1",
        "0.5",
        "world",
        "0.6",
        "0.9",
    ]
    assert "hello world" in parsed
