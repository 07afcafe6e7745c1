"""Fuzzing the input layer (issue 23): random bytes and mutated headers of real audio files as audio, random lines
as lists, random JSON as configs. Every case ends in a result or a one-line error of the layer's class, within a
time bound (hypothesis' deadline) and a memory bound (tracemalloc's peak, which sees numpy's buffers), never
another exception. Derandomized: the same examples every run."""

import json
import os
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

hypothesis = pytest.importorskip(
    "hypothesis", reason="the fuzz test needs hypothesis (pip install -e .[test])"
)
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from conftest import FIXTURE_A  # noqa: E402
from osum_min.audio import AudioError, load_audio  # noqa: E402
from osum_min.data.formats import DataError, read_data_list  # noqa: E402
from osum_min.inference.inputs import collect_inputs  # noqa: E402
from osum_min.model.osum import OSUMConfig  # noqa: E402
from osum_min.convert.original import read_original_config  # noqa: E402


def fuzz(examples: int):
    """The same `examples` cases every run, each within 5 s (a hang fails, it does not stall CI)."""
    return settings(
        max_examples=examples,
        derandomize=True,
        deadline=5000,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )


# a 4 KB input never needs more, whatever its header promises
MAX_PEAK_BYTES = 64 * 2**20
# hypothesis reruns examples: a folder outside tmp_path
WORK = Path(tempfile.mkdtemp(prefix="osum_fuzz_"))


def real_files() -> dict[str, bytes]:
    """Small real recordings in the formats libsndfile reads, as bytes to mutate."""
    t = np.arange(1600) / 8000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    found = {}
    for name, fmt, subtype in [
        ("wav", "WAV", "PCM_16"),
        ("float.wav", "WAV", "FLOAT"),
        ("flac", "FLAC", "PCM_16"),
        ("ogg", "OGG", "VORBIS"),
        ("au", "AU", "PCM_16"),
        ("g721.au", "AU", "G721_32"),
        ("aiff", "AIFF", "PCM_24"),
        ("w64", "W64", "PCM_U8"),
    ]:
        path = WORK / f"real.{name}"
        soundfile.write(path, tone, 8000, format=fmt, subtype=subtype)
        found[name] = path.read_bytes()
    return found


REAL = real_files()


@st.composite
def mutated_audio(draw) -> bytes:
    """A real file with bytes of its header overwritten, then perhaps cut short or grown."""
    data = bytearray(REAL[draw(st.sampled_from(sorted(REAL)))])
    for _ in range(draw(st.integers(1, 6))):
        position = draw(st.integers(0, min(63, len(data) - 1)))
        data[position] = draw(
            st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255))])
        )
    data = data[: draw(st.integers(0, len(data)))] if draw(st.booleans()) else data
    return bytes(data) + draw(st.binary(max_size=64))


def check_outcome(run, error_class, source):
    """run() returns, or raises error_class in one line naming `source`; its memory peak stays bounded."""
    tracemalloc.start()
    try:
        return run()
    except error_class as err:
        message = str(err)
        assert "\n" not in message and message.startswith(str(source)), message
        return err
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < MAX_PEAK_BYTES, f"{peak / 2**20:.0f} MiB"


@fuzz(1500)
@given(
    data=st.one_of(mutated_audio(), st.binary(max_size=4096)),
    suffix=st.sampled_from([".wav", ".au", ".bin"]),
)
def test_random_and_mutated_audio_is_a_waveform_or_one_line(data, suffix):
    path = WORK / f"clip{suffix}"
    path.write_bytes(data)
    outcome = check_outcome(lambda: load_audio(path), AudioError, path)
    event(
        "decoded"
        if isinstance(outcome, torch.Tensor)
        else f"refused: {outcome.problem.split(' (')[0][:40]}"
    )
    if isinstance(outcome, torch.Tensor):
        assert (
            outcome.ndim == 1 and len(outcome) >= 400 and torch.isfinite(outcome).all()
        )


SPECIAL_PATHS = [
    "/dev/zero",
    "/dev/urandom",
    str(WORK),
    str(WORK / "fifo.wav"),
    str(WORK / ("x" * 300 + ".wav")),
    str(FIXTURE_A / "audio.wav"),
    str(WORK / "loop.wav"),
    "",
    "\ufeff",
    "a\x00b.wav",
]
os.mkfifo(WORK / "fifo.wav")
os.symlink(WORK / "loop.wav", WORK / "loop.wav")
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["key", "wav", "txt", "x"]) | st.text(),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)
LIST_LINES = st.one_of(
    st.text(max_size=80),
    st.sampled_from(SPECIAL_PATHS),
    st.builds(
        lambda key, wav: json.dumps({"key": key, "wav": wav}),
        JSON_VALUES,
        st.sampled_from(SPECIAL_PATHS) | JSON_VALUES,
    ),
    JSON_VALUES.map(json.dumps),
    st.integers(1, 200_000).map(lambda n: "{" * n),
)


@fuzz(300)
@given(lines=st.lists(LIST_LINES, max_size=6), bom=st.booleans())
def test_random_lists_are_items_or_one_line(lines, bom):
    listing = WORK / "list.jsonl"
    listing.write_text(
        ("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8"
    )
    items = check_outcome(lambda: collect_inputs([str(listing)]), DataError, listing)
    event(f"{len(items)} items" if isinstance(items, list) else "list refused")
    for item in items if isinstance(items, list) else []:
        # a line that names no file, or a key/file again: that item's error
        if item.problem is not None:
            assert "\n" not in item.problem
            assert item.path.startswith(f"{listing}:") or "given twice" in item.problem
        else:
            # its message starts with its path
            check_outcome(lambda: load_audio(item.path), AudioError, "")
    check_outcome(lambda: read_data_list(listing), DataError, listing)


def mutate(config, draw):
    """The config with one value, anywhere in it, replaced by random JSON."""
    if isinstance(config, dict) and config and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(config)))
        return {**config, key: mutate(config[key], draw)}
    return draw(JSON_VALUES)


@st.composite
def configs(draw, base: dict):
    return draw(
        st.one_of(
            st.just(base).map(lambda b: mutate(b, draw)),
            JSON_VALUES,
            st.integers(1, 200_000).map(lambda n: "[" * n + "]" * n),
        )
    )


ORIGINAL = json.loads((FIXTURE_A / "osum_config.json").read_text())
OURS = OSUMConfig().to_dict()


@fuzz(600)
@given(original=configs(ORIGINAL), ours=configs(OURS))
def test_random_configs_are_configs_or_one_line(original, ours):
    for data, read in ((original, read_original_config), (ours, OSUMConfig.from_file)):
        path = WORK / "config.json"
        path.write_text(data if isinstance(data, str) else json.dumps(data))
        outcome = check_outcome(lambda: read(path), ValueError, path)
        event(
            f"{read.__name__}: {'read' if isinstance(outcome, OSUMConfig) else 'refused'}"
        )
        assert isinstance(outcome, (OSUMConfig, ValueError))


@pytest.mark.parametrize("name", sorted(REAL))
def test_the_unmutated_recordings_load(name):
    # 0.2 s at 16 kHz (G.721 pads a block)
    assert 3200 <= len(load_audio(WORK / f"real.{name}")) <= 3400


# ---- the server's JSON bodies and form fields (issue 30): never a 500, and it still answers ----

from test_infer import weights_with_tokenizer  # noqa: E402, F401  (the tiny model with a tokenizer)

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()  # NaN and infinities too: Python's json writes and reads them
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
# 500 is for our bugs; 503 for overload
SERVER_STATUSES = {
    200,
    400,
    401,
    404,
    408,
    413,
    422,
}


@pytest.fixture(scope="module")
def fuzzed_server(weights_with_tokenizer):  # noqa: F811
    """(base URL, an httpx client, a valid chat body) of a served tiny model."""
    serve_tests = pytest.importorskip(
        "test_serve", reason="the server needs the [serve] extra"
    )
    from osum_min.model.osum import load_for_inference
    from osum_min.serve.server import ServerConfig, create_app
    from osum_min.text.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_pretrained(weights_with_tokenizer)
    pipeline = serve_tests.Pipeline(
        load_for_inference(weights_with_tokenizer, tokenizer, device="cpu"), tokenizer
    )
    config = ServerConfig(max_upload_mb=1, max_audio_seconds=20, max_new_tokens=4)
    valid = {
        "model": "osum",
        "messages": serve_tests.audio_message(serve_tests.AUDIO[1], "hi"),
    }
    with serve_tests.running(create_app(pipeline, config)) as url:
        with serve_tests.httpx.Client(base_url=url, timeout=60) as client:
            yield client, valid, serve_tests.wav_bytes(1)


def check_reply(reply):
    assert reply.status_code in SERVER_STATUSES, (reply.status_code, reply.text[:300])
    if reply.status_code != 200:
        message = reply.json()["error"]["message"]
        assert message and "\n" not in message and "Traceback" not in message


@st.composite
def chat_bodies(draw, valid: dict) -> bytes:
    """A valid body with fields replaced or added, any JSON value, or bytes."""
    from osum_min.serve.fields import CHAT_FIELDS

    kind = draw(st.sampled_from(["mutated", "mutated", "json", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "json":
        return json.dumps(draw(JSON_VALUES)).encode()
    names = st.sampled_from([*CHAT_FIELDS, "x"])
    changes = draw(st.dictionaries(names, JSON_VALUES, max_size=3))
    return json.dumps({**valid, **changes}).encode()


def test_random_and_mutated_chat_bodies_are_never_a_500(fuzzed_server):
    client, valid, _ = fuzzed_server

    @fuzz(150)
    @given(data=st.data())
    def case(data):
        body = data.draw(chat_bodies(valid))
        check_reply(client.post("/v1/chat/completions", content=body))

    case()
    assert client.post("/v1/chat/completions", json=valid).status_code == 200


FORM_NAMES = [
    "model",
    "response_format",
    "timestamp_granularities[]",
    "task",
    "prompt",
    "temperature",
    "language",
    "file",
    "x",
]


def test_random_transcription_form_fields_are_never_a_500(fuzzed_server):
    client, _, wav = fuzzed_server

    @fuzz(120)
    @given(
        fields=st.dictionaries(
            st.sampled_from(FORM_NAMES), st.text(max_size=12), max_size=3
        ),
        audio=st.sampled_from([wav, b"", b"RIFF0000WAVE"]) | st.binary(max_size=64),
    )
    def case(fields, audio):
        check_reply(
            client.post(
                "/v1/audio/transcriptions",
                data=fields,
                files={"file": ("a.wav", audio)},
            )
        )

    case()
    reply = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav)})
    assert reply.status_code == 200, reply.text


FIXTURE_SCORING = Path(__file__).parent / "fixtures" / "scoring"
KEYS = st.sampled_from(["a", "b", "c", "utt1", "\ufeffa", "BAC009S0764W0121"])
WORDS = st.sampled_from(
    ["hello", "world", "你好", "世界", "<HAPPY>", "<", ">", "world.", "42nd", "，", "'"]
)
KEY_TEXT_LINES = st.one_of(
    st.builds(lambda k, ws: f"{k} {' '.join(ws)}", KEYS, st.lists(WORDS, max_size=5)),
    KEYS,  # a key-only line: an empty text
    st.text(max_size=40),
    st.sampled_from(["", " ", "\t", "a\tb c", "a  ", "\x00 x", "\u2028", "a\rb"]),
    st.sampled_from(
        (FIXTURE_SCORING / "mix.ref").read_text(encoding="utf-8").splitlines()[:8]
        + (FIXTURE_SCORING / "tags.hyp").read_text(encoding="utf-8").splitlines()[:8]
    ),
)
KEY_TEXT_FILES = st.one_of(
    st.lists(
        KEY_TEXT_LINES, max_size=8, unique_by=lambda line: (line.split() or [""])[0]
    ).map(lambda lines: "\n".join(lines).encode("utf-8")),
    st.lists(KEY_TEXT_LINES, max_size=8).map(
        lambda lines: "\n".join(lines).encode("utf-8")
    ),
    st.binary(max_size=200),  # not UTF-8, NUL bytes, anything
)


@fuzz(400)
@given(
    ref=KEY_TEXT_FILES,
    hyp=KEY_TEXT_FILES,
    metric=st.sampled_from(["wer", "cer", "acc", "bleu", "qwen2-audio"]),
)
def test_random_key_text_files_score_something_or_say_one_line(ref, hyp, metric):
    """eval.py score on random and mutated `key text` files: a score over at least one reference unit (or line),
    or one error line and exit 2; never a traceback, never `Overall 0.00 %` over nothing."""
    import contextlib
    import io

    import eval as eval_command

    if metric in ("bleu", "qwen2-audio"):
        pytest.importorskip(
            "sacrebleu", reason="BLEU and qwen2-audio need the [eval] extra"
        )
    paths = WORK / "ref.txt", WORK / "hyp.txt"
    paths[0].write_bytes(ref)
    paths[1].write_bytes(hyp)
    flags = (
        ["--protocol", "qwen2-audio", "--language", "en"]
        if metric == "qwen2-audio"
        else ["--metric", metric]
    )
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = eval_command.main(["score", *map(str, paths), *flags])
    errors = [
        line
        for line in err.getvalue().splitlines()
        if not line.startswith("eval.py: warning:")
    ]
    if code == 2:
        event(f"refused: {errors[0].split(': ')[-1][:40]}")
        assert (
            out.getvalue() == ""
            and len(errors) == 1
            and errors[0].startswith("eval.py: error: ")
        )
        return
    event("scored")
    result = json.loads(out.getvalue().splitlines()[-1])
    assert code == 0 and errors == []
    assert (
        result["N"] > 0
        if "N" in result
        else result.get("total", result.get("utterances", 0)) > 0
    )
