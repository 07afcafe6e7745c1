"""The OpenAI-compatible server (`infer.py --serve`) on fixture_a's weights with a stand-in tokenizer, started on
127.0.0.1 in a thread, called with the official `openai` client and with raw HTTP (httpx). Each answer is checked
against the same request decoded alone through the Pipeline (the fixture model writes random ids, so "equal to
alone" is the meaningful check). SRWT answers carry a scripted model text (ScriptedSRWT) because random ids never
form timed words: those tests prove the formatting and the HTTP path, not the model. Plus the conversation format."""

import asyncio
import base64
import contextlib
import io
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest
import soundfile

from conftest import FIXTURE_A
from test_infer import weights_with_tokenizer  # noqa: F401  (a pytest fixture: the tiny model with a byte tokenizer)
from osum_min.audio import SAMPLE_RATE, load_audio, log_mel, pad_features
from osum_min.serve.conversation import ConversationError, chat, content, to_request
from osum_min.model.generate import DEFAULT_DECODING
from osum_min.inference.pipeline import Pipeline, Request
from osum_min.inference.subtitles import subtitles
from osum_min.text.tasks import TASKS, parse

fastapi = pytest.importorskip("fastapi", reason="the server needs the [serve] extra")
uvicorn = pytest.importorskip("uvicorn", reason="the server needs the [serve] extra")
pytest.importorskip(
    "multipart", reason="the server needs the [serve] extra (python-multipart)"
)
httpx = pytest.importorskip("httpx", reason="the raw HTTP tests use httpx")
openai = pytest.importorskip(
    "openai", reason="the client tests use the official openai client"
)

from osum_min.serve.server import ServerConfig, create_app, uvicorn_config  # noqa: E402

KEY = "sk-test"
TOKENS = 8  # the server's max_new_tokens: the random model never stops early, so this bounds every decode
AUDIO = [
    FIXTURE_A / "audio.wav",
    FIXTURE_A / "audio_batch_item1.wav",
    FIXTURE_A / "audio_44k.wav",
]
SRWT_RAW = "hello<0.3, 0.7> big<0.8, 1.1> world<2.5, 3.0>"


class ScriptedSRWT(Pipeline):
    """The real pipeline, except that an SRWT answer's model text is SRWT_RAW (parsed by the real parser)."""

    def answer(self, request, prompt_ids, decoded):
        answer = super().answer(request, prompt_ids, decoded)
        if request.task.output == "srwt" and answer.error is None:
            answer.result = parse(request.task, SRWT_RAW)
        return answer


@contextlib.contextmanager
def running(app):
    """The base URL of `app` served by uvicorn on a free port of 127.0.0.1, in a thread, stopped afterwards."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), (
            "the server did not start"
        )
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def served(weights_with_tokenizer):  # noqa: F811
    """(base URL, pipeline, app) of a server on a free port, stopped after the module."""
    from osum_min.model.osum import load_for_inference
    from osum_min.text.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_pretrained(weights_with_tokenizer)
    pipeline = ScriptedSRWT(
        load_for_inference(weights_with_tokenizer, tokenizer, device="cpu"), tokenizer
    )
    config = ServerConfig(
        api_key=KEY,
        max_upload_mb=1,
        max_audio_seconds=20,
        max_new_tokens=TOKENS,
        wait_ms=50,
    )
    app = create_app(pipeline, config)
    with running(app) as url:
        yield url, pipeline, app


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(
        base_url=served[0] + "/v1", api_key=KEY, max_retries=0, timeout=60
    )


def alone(pipeline, request: Request):
    [answer] = pipeline([request])
    assert answer.error is None, answer.error
    return answer


def decoding(**changes):
    return replace(DEFAULT_DECODING, max_new_tokens=TOKENS, **changes)


def b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def audio_message(path, text=None) -> list[dict]:
    parts = [
        {"type": "input_audio", "input_audio": {"data": b64(path), "format": "wav"}}
    ]
    return [
        {
            "role": "user",
            "content": parts + ([{"type": "text", "text": text}] if text else []),
        }
    ]


def post(served, path, key=KEY, **kwargs):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(served[0] + path, headers=headers, timeout=60, **kwargs)


# ---- transcriptions ----


def test_transcription_json_and_text_equal_the_pipeline_alone(served, client):
    expected = alone(
        served[1], Request(str(AUDIO[0]), config=decoding())
    ).result.transcript
    with AUDIO[0].open("rb") as audio:
        assert (
            client.audio.transcriptions.create(model="osum", file=audio).text
            == expected
        )
    with AUDIO[0].open("rb") as audio:
        assert (
            client.audio.transcriptions.create(
                model="osum", file=audio, response_format="text"
            ).strip()
            == expected
        )


def test_transcription_task_field_gives_the_labels(served):
    expected = alone(
        served[1], Request(str(AUDIO[1]), task=TASKS["ser"], config=decoding())
    ).result
    reply = post(
        served,
        "/v1/audio/transcriptions",
        files={"file": AUDIO[1].open("rb")},
        data={"model": "osum", "task": "ser"},
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["task"] == "ser" and body["text"] == expected.transcript
    assert body.get("labels", {}) == expected.labels


@pytest.mark.parametrize("response_format", ["srt", "vtt"])
def test_subtitles_from_srwt(served, client, response_format):
    with AUDIO[0].open("rb") as audio:
        text = client.audio.transcriptions.create(
            model="osum", file=audio, response_format=response_format
        )
    words = parse(TASKS["srwt"], SRWT_RAW).words
    assert text == subtitles(words, vtt=response_format == "vtt")
    assert (
        "00:00:00.300 --> " if response_format == "vtt" else "1\n00:00:00,300 --> "
    ) in text


def test_verbose_json_words_and_segments(served, client):
    with AUDIO[0].open("rb") as audio:
        body = client.audio.transcriptions.create(
            model="osum",
            file=audio,
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
        )
    assert [(w.word, w.start, w.end) for w in body.words] == [
        ("hello", 0.3, 0.7),
        ("big", 0.8, 1.1),
        ("world", 2.5, 3.0),
    ]
    # a pause over 1 s starts a new segment
    assert [(s.start, s.end, s.text) for s in body.segments] == [
        (0.3, 1.1, "hello big"),
        (2.5, 3.0, "world"),
    ]
    assert body.duration == pytest.approx(soundfile.info(AUDIO[0]).duration, abs=0.01)
    assert body.language == "english"  # SRWT_RAW's words


# ---- chat ----


def test_chat_with_input_audio_equals_the_pipeline_alone(served, client):
    messages = audio_message(AUDIO[1], "describe the audio")
    reply = client.chat.completions.create(model="osum", messages=messages)
    expected = alone(served[1], to_request(messages, decoding(), remote=True))
    assert reply.choices[0].message.content == content(expected)
    mel, lens = pad_features([log_mel(load_audio(AUDIO[1]))])
    _, speech = served[1].model.embed_speech(mel, lens, original_mask_rule=False)
    # + speech bos and eos
    assert reply.usage.prompt_tokens == len(expected.prompt_ids) + int(speech[0]) + 2
    assert reply.usage.completion_tokens == TOKENS
    assert reply.choices[0].finish_reason == "length"


def test_voice_chat_and_python_chat_api_agree(served, client):
    """Audio alone is voice chat (sttc); the Python `chat` API answers a list of conversations as one batch."""
    reply = client.chat.completions.create(
        model="osum", messages=audio_message(AUDIO[0])
    )
    conversations = [
        [{"role": "user", "content": [{"type": "audio", "audio": str(AUDIO[0])}]}],
        [
            {
                "role": "user",
                "content": [
                    {"type": "audio", "audio": str(AUDIO[0])},
                    {"type": "text", "text": "hi"},
                ],
            }
        ],
    ]
    answers = chat(served[1], conversations, decoding())
    assert reply.choices[0].message.content == answers[0] and isinstance(
        answers[1], str
    )


def user_audio(audio, text=None) -> list[dict]:
    parts = [{"type": "audio", "audio": audio}] + (
        [{"type": "text", "text": text}] if text else []
    )
    return [{"role": "user", "content": parts}]


@pytest.mark.parametrize(
    "arguments, error, words",
    [
        (("abc",), TypeError, "conversations must be a list of conversations"),
        ((None,), TypeError, "conversations must be a list of conversations"),
        (([user_audio(str(AUDIO[0]))], {"num_beams": 1}), TypeError, "config must be"),
        (
            ([user_audio(str(AUDIO[0]))], None, "16000"),
            TypeError,
            "sample_rate must be",
        ),
        (([user_audio(str(AUDIO[0]))], None, True), TypeError, "sample_rate must be"),
        (
            ([user_audio(str(AUDIO[0]))], None, -16000),
            ValueError,
            "sample_rate must be above",
        ),
    ],
)
def test_chat_arguments_of_the_wrong_kind_fail_at_the_entry(
    served, arguments, error, words
):
    with pytest.raises(error) as raised:
        chat(served[1], *arguments)
    assert words in str(raised.value) and "\n" not in str(raised.value)
    with pytest.raises(TypeError, match="pipeline must be a Pipeline"):
        chat("not a pipeline", [])


def test_chat_answers_each_conversation_a_bad_one_its_error(served, tmp_path):
    """Good conversations keep their answers beside bad ones, as infer.py answers each file."""
    text_file = tmp_path / "a.txt"
    text_file.write_text("x")
    samples = load_audio(AUDIO[0]).numpy()
    with AUDIO[0].open("rb") as binary, text_file.open() as text:
        conversations = [
            user_audio(str(AUDIO[0]), "hi"),
            user_audio(samples.tolist(), "hi"),  # a list of floats
            user_audio({"path": str(AUDIO[0])}, "hi"),
            user_audio(binary, "hi"),  # a file open with "rb": read
            user_audio(text, "hi"),
            user_audio(samples, "hi"),  # samples without their rate
            [{"role": "user", "content": "no audio"}],
        ]
        answers = chat(served[1], conversations, decoding(), sample_rate=None)
    assert answers[0] == answers[3] and isinstance(answers[0], str)
    problems = {
        1: "not list",
        2: "not dict",
        4: "open it with 'rb'",
        5: "needs their sample_rate",
        6: "exactly one audio clip",
    }
    for index, words in problems.items():
        assert words in str(answers[index].error) and "\n" not in str(
            answers[index].error
        )
    [with_rate] = chat(
        served[1], [user_audio(samples, "hi")], None, sample_rate=SAMPLE_RATE
    )
    assert isinstance(with_rate, str)


def test_streaming_equals_greedy_alone(served, client):
    messages = audio_message(AUDIO[2], "what is said")
    stream = client.chat.completions.create(
        model="osum",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    expected = alone(
        served[1], to_request(messages, decoding(num_beams=1), remote=True)
    )
    assert streamed == content(expected) and streamed
    assert chunks[-1].usage.completion_tokens == TOKENS


def test_eight_concurrent_clients_each_get_their_answer_alone(served):
    jobs = [(AUDIO[i % 3], f"prompt {i % 4}") for i in range(8)]
    before = served[2].state.batcher.batch_sizes.copy()

    def ask(job):
        reply = post(
            served,
            "/v1/chat/completions",
            json={"model": "osum", "messages": audio_message(*job)},
        )
        assert reply.status_code == 200, reply.text
        return reply.json()["choices"][0]["message"]["content"]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, jobs))
    expected = [
        content(
            alone(served[1], to_request(audio_message(*job), decoding(), remote=True))
        )
        for job in jobs
    ]
    assert answers == expected
    # some requests shared a batch
    assert max(served[2].state.batcher.batch_sizes - before) > 1


def test_concurrent_streams_share_batches_and_each_equals_alone(served):
    jobs = [(AUDIO[i % 3], f"stream {i}") for i in range(4)]
    before = served[2].state.batcher.batch_sizes.copy()

    def stream(job):
        text = ""
        with httpx.stream(
            "POST",
            served[0] + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {KEY}"},
            json={"model": "osum", "stream": True, "messages": audio_message(*job)},
            timeout=60,
        ) as reply:
            lines = [line for line in reply.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        for line in lines[:-1]:
            text += json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
        return text

    with ThreadPoolExecutor(4) as pool:
        streamed = list(pool.map(stream, jobs))
    expected = [
        content(
            alone(
                served[1],
                to_request(audio_message(*job), decoding(num_beams=1), remote=True),
            )
        )
        for job in jobs
    ]
    assert streamed == expected
    assert max(served[2].state.batcher.batch_sizes - before) > 1


# ---- bad requests: status, one line, and the server answers the next request ----


def wav_bytes(seconds: float) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(
        buffer,
        np.zeros(int(seconds * SAMPLE_RATE), np.float32),
        SAMPLE_RATE,
        format="WAV",
    )
    return buffer.getvalue()


def chat_body(part):
    return {
        "json": {"model": "osum", "messages": [{"role": "user", "content": [part]}]}
    }


BAD = {
    "not audio": (
        "/v1/audio/transcriptions",
        {"files": {"file": ("a.wav", b"hello, not audio")}},
        400,
    ),
    "empty": ("/v1/audio/transcriptions", {"files": {"file": ("a.wav", b"")}}, 400),
    "over the upload cap": (
        "/v1/audio/transcriptions",
        {"files": {"file": ("a.wav", b"0" * 2**21)}},
        413,
    ),
    "over the duration cap": (
        "/v1/audio/transcriptions",
        {"files": {"file": ("a.wav", wav_bytes(21))}},
        413,
    ),
    "bad base64": (
        "/v1/chat/completions",
        chat_body(
            {"type": "input_audio", "input_audio": {"data": "@@@", "format": "wav"}}
        ),
        400,
    ),
    "unknown model": (
        "/v1/audio/transcriptions",
        {"files": {"file": ("a.wav", wav_bytes(1))}, "data": {"model": "whisper-9"}},
        404,
    ),
    "unknown task": (
        "/v1/audio/transcriptions",
        {"files": {"file": ("a.wav", wav_bytes(1))}, "data": {"task": "dance"}},
        404,
    ),
    "remote URL": (
        "/v1/chat/completions",
        chat_body(
            {"type": "audio_url", "audio_url": {"url": "http://example.com/a.wav"}}
        ),
        400,
    ),
    "file URL": (
        "/v1/chat/completions",
        chat_body({"type": "audio_url", "audio_url": "file:///etc/passwd"}),
        400,
    ),
    "over-long prompt": (
        "/v1/audio/transcriptions",
        {
            "files": {"file": ("a.wav", wav_bytes(1))},
            "data": {"prompt": "word " * 3000},
        },
        422,
    ),
    "two clips": (
        "/v1/chat/completions",
        {
            "json": {
                "model": "osum",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "input_audio",
                                "input_audio": {"data": b64(AUDIO[0])},
                            }
                        ]
                        * 2,
                    }
                ],
            }
        },
        400,
    ),
    "not JSON": ("/v1/chat/completions", {"content": b"{nope"}, 400),
    "no such route": ("/v1/nothing", {}, 404),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_request_gets_its_status_and_one_line(served, name):
    path, kwargs, status = BAD[name]
    reply = post(served, path, **kwargs)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert (
        error["message"]
        and "\n" not in error["message"]
        and "Traceback" not in error["message"]
    )
    assert {"type", "code"} <= set(error)
    assert httpx.get(served[0] + "/health").json()["status"] == "ok"


@pytest.mark.parametrize("key", [None, "sk-wrong"])
def test_missing_or_wrong_key_is_401(served, key):
    reply = post(
        served,
        "/v1/audio/transcriptions",
        key=key,
        files={"file": ("a.wav", wav_bytes(1))},
    )
    assert reply.status_code == 401 and "API key" in reply.json()["error"]["message"]


def test_after_bad_requests_the_server_still_transcribes(served, client):
    with AUDIO[0].open("rb") as audio:
        assert (
            client.audio.transcriptions.create(model="osum", file=audio).text
            is not None
        )
    assert [m.id for m in client.models.list()] == ["osum"]


def test_infer_serve_refuses_weights_without_a_tokenizer(fixture_weights, capsys):
    import infer

    assert (
        infer.main(["--serve", "--weights", str(fixture_weights), "--port", "1"]) == 2
    )
    err = capsys.readouterr().err
    assert "has no tokenizer" in err and len(err.strip().splitlines()) == 1


# ---- client mistakes: a 400 naming the field, never a 500 (issue 30) ----

DEEP = 100_000


def chat_with(**fields):
    return {"model": "osum", "messages": audio_message(AUDIO[1], "describe"), **fields}


FIELD_MISTAKES = {  # name: (JSON body, param); each a class of mistake, not one case
    "nested JSON body": ("[" * DEEP + "]" * DEEP, None),
    "nested messages": ('{"messages": ' + "[" * DEEP + "]" * DEEP + "}", None),
    "body an array": ([], None),
    "stream a string": (chat_with(stream="false"), "stream"),
    "stream a number": (chat_with(stream=0), "stream"),
    "stream_options a string": (
        chat_with(stream=True, stream_options="yes"),
        "stream_options",
    ),
    "stream_options an array": (
        chat_with(stream=True, stream_options=[1]),
        "stream_options",
    ),
    "include_usage a string": (
        chat_with(stream=True, stream_options={"include_usage": "true"}),
        "stream_options",
    ),
    "unknown stream option": (
        chat_with(stream=True, stream_options={"x": 1}),
        "stream_options",
    ),
    "tiny temperature": (chat_with(temperature=1e-45), "temperature"),
    "temperature a string": (chat_with(temperature="0.5"), "temperature"),
    "temperature too high": (chat_with(temperature=2.5), "temperature"),
    "seed past torch's range": (chat_with(temperature=1, seed=2**64), "seed"),
    "seed a float": (chat_with(temperature=1, seed=1.0), "seed"),
    "seed a string": (chat_with(temperature=1, seed="7"), "seed"),
    "seed true": (chat_with(temperature=1, seed=True), "seed"),
    "max_tokens a float": (chat_with(max_tokens=5.0), "max_tokens"),
    "max_tokens 0": (chat_with(max_tokens=0), "max_tokens"),
    "max_tokens huge": (chat_with(max_tokens=10**30), "max_tokens"),
    "top_p 0": (chat_with(temperature=1, top_p=0), "top_p"),
    "top_p without sampling": (chat_with(top_p=0.5), "top_p"),
    "n 2": (chat_with(n=2), "n"),
    "messages a string": (chat_with(messages="hello"), "messages"),
    "no messages": ({"model": "osum"}, "messages"),
    "model a number": (chat_with(model=7), "model"),
    "unknown field": (chat_with(best_of=2), "'best_of'"),
    "stop an empty string": (chat_with(stop=[""]), "stop"),
    "five stops": (chat_with(stop=list("abcde")), "stop"),
    "stop a number": (chat_with(stop=3), "stop"),
    "top_logprobs without logprobs": (chat_with(top_logprobs=2), "top_logprobs"),
    "top_logprobs over 20": (chat_with(logprobs=True, top_logprobs=21), "top_logprobs"),
    "top_logprobs a float": (
        chat_with(logprobs=True, top_logprobs=2.0),
        "top_logprobs",
    ),
    "logprobs streamed": (chat_with(logprobs=True, stream=True), "logprobs"),
    "presence_penalty": (chat_with(presence_penalty=0.5), "presence_penalty"),
    "frequency_penalty": (chat_with(frequency_penalty=-1), "frequency_penalty"),
    "logit_bias": (chat_with(logit_bias={"5": 10}), "logit_bias"),
    "response_format json": (
        chat_with(response_format={"type": "json_object"}),
        "response_format",
    ),
}


@pytest.mark.parametrize("name", FIELD_MISTAKES)
def test_a_chat_field_of_the_wrong_type_or_range_is_a_400_naming_it(served, name):
    body, param = FIELD_MISTAKES[name]
    data = body if isinstance(body, str) else json.dumps(body)
    reply = post(served, "/v1/chat/completions", content=data.encode())
    assert reply.status_code == 400, reply.text
    # never streamed
    assert reply.headers["content-type"].startswith("application/json")
    error = reply.json()["error"]
    assert "\n" not in error["message"] and len(error["message"]) < 400
    assert error["param"] == param and (
        param is None or param.strip("'") in error["message"]
    )
    assert httpx.get(served[0] + "/health", timeout=10).json()["status"] == "ok"


def spell(entries) -> str:
    """The text that logprobs entries' bytes spell."""
    return b"".join(bytes(entry["bytes"]) for entry in entries).decode(
        "utf-8", "replace"
    )


def test_logprobs_list_each_answer_token_and_stop_where_the_text_stops(served):
    """OpenAI's `logprobs.content`: one entry per answer token (the eos left out), whose bytes
    spell the answer, each with its alternatives best first; with a stop string, the entries end
    before the token that brings it."""
    body = chat_with(logprobs=True, top_logprobs=2)
    reply = post(served, "/v1/chat/completions", json=body).json()
    [choice] = reply["choices"]
    entries = choice["logprobs"]["content"]
    eos = served[1].model.config.eod_id
    assert 0 < len(entries) <= reply["usage"]["completion_tokens"]
    assert spell(entries).strip() == choice["message"]["content"]
    for entry in entries:
        values = [alt["logprob"] for alt in entry["top_logprobs"]]
        assert len(values) == 2 and values == sorted(values, reverse=True)
        assert entry["logprob"] <= values[0] + 1e-6 and entry["logprob"] <= 0
    content = choice["message"]["content"]
    assert len(content) > 4, "the answer needs a middle to stop at"
    stop = content[len(content) // 2 :][:2]
    stopped = post(
        served, "/v1/chat/completions", json={**body, "stop": [stop]}
    ).json()["choices"][0]
    kept = stopped["logprobs"]["content"]
    assert kept == entries[: len(kept)] and len(kept) < len(entries)
    assert stop not in spell(kept) and stop in spell(entries[: len(kept) + 1])
    plain = post(served, "/v1/chat/completions", json=chat_with()).json()
    assert plain["choices"][0]["logprobs"] is None
    assert eos not in [entry["token"] for entry in entries]


def test_fields_at_the_values_that_change_nothing_are_taken(served):
    """What OpenAI's clients send by default: nulls, zero penalties, text format."""
    fields = dict(
        presence_penalty=0,
        frequency_penalty=0.0,
        logit_bias={},
        logprobs=False,
        response_format={"type": "text"},
        user="me",
        temperature=None,
        stream=False,
    )
    reply = post(served, "/v1/chat/completions", json=chat_with(**fields))
    assert reply.status_code == 200, reply.text


FORM_MISTAKES = {  # form fields: (data, param)
    "temperature not a number": ({"temperature": "warm"}, "temperature"),
    "temperature nan": ({"temperature": "nan"}, "temperature"),
    "temperature with underscores": ({"temperature": "1_0"}, "temperature"),
    "temperature tiny": ({"temperature": "1e-45"}, "temperature"),
    "temperature too high": ({"temperature": "3"}, "temperature"),
    "language": ({"language": "en"}, "language"),
    "unknown field": ({"beam_size": "5"}, "'beam_size'"),
    "model twice": ({"model": ["osum", "osum"]}, "model"),
    "bad format": ({"response_format": "xml"}, "response_format"),
    "bad granularity": (
        {"timestamp_granularities[]": "char"},
        "timestamp_granularities",
    ),
    "srt of asr": ({"response_format": "srt", "task": "asr"}, "task"),
}


@pytest.mark.parametrize("name", FORM_MISTAKES)
def test_a_transcription_field_of_the_wrong_type_or_range_is_a_400_naming_it(
    served, name
):
    data, param = FORM_MISTAKES[name]
    files = {"file": ("a.wav", wav_bytes(1))}
    reply = post(served, "/v1/audio/transcriptions", files=files, data=data)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert "\n" not in error["message"] and error["param"] == param


def test_a_form_field_sent_as_a_file_is_a_400(served):
    files = [("file", ("a.wav", wav_bytes(1))), ("model", ("m.txt", b"osum"))]
    reply = post(served, "/v1/audio/transcriptions", files=files)
    assert reply.status_code == 400 and reply.json()["error"]["param"] in (
        "model",
        None,
    )


def test_seeds_are_exact_integers(served):
    """Seeds beyond 2**53 are distinct seeds (a float would merge them), each equal to alone."""
    pipeline, answers = served[1], []
    for seed in (2**53, 2**53 + 1):
        body = chat_with(temperature=1.0, seed=seed)
        reply = post(served, "/v1/chat/completions", json=body)
        assert reply.status_code == 200, reply.text
        config = decoding(num_beams=1, do_sample=True, temperature=1.0, seed=seed)
        expected = alone(pipeline, to_request(body["messages"], config, remote=True))
        assert reply.json()["choices"][0]["message"]["content"] == content(expected)
        answers.append(expected.decoded.ids)
    assert answers[0] != answers[1]


def test_stop_strings_cut_the_answer_streamed_or_not(served):
    whole = post(
        served, "/v1/chat/completions", json=chat_with(stream=False, temperature=0)
    )
    text = whole.json()["choices"][0]["message"]["content"]
    assert len(text) > 6, text
    stop = text[3:6]
    expected = text[: text.find(stop)].rstrip()
    reply = post(
        served, "/v1/chat/completions", json=chat_with(stop=[stop, "\u2603never"])
    )
    choice = reply.json()["choices"][0]
    assert (
        choice["message"]["content"] == expected and choice["finish_reason"] == "stop"
    )
    # streamed (greedy): the deltas add up to the text before the stop, finish "stop"
    streamed = post(served, "/v1/chat/completions", json=chat_with(stream=True)).text
    greedy = "".join(
        c["choices"][0]["delta"].get("content", "")
        for c in map(
            json.loads,
            (x[6:] for x in streamed.split("\n\n") if x.startswith("data: {")),
        )
    )
    stop = greedy[3:6]
    body = chat_with(stream=True, stop=stop, stream_options={"include_usage": True})
    chunks = [
        json.loads(line[6:])
        for line in post(served, "/v1/chat/completions", json=body).text.split("\n\n")
        if line.startswith("data: {")
    ]
    deltas = [c["choices"][0] for c in chunks if c["choices"]]
    assert (
        "".join(d["delta"].get("content", "") for d in deltas)
        == greedy[: greedy.find(stop)]
    )
    assert (
        deltas[-1]["finish_reason"] == "stop"
        and chunks[-1]["usage"]["completion_tokens"]
    )


def test_until_stop_holds_back_what_may_start_a_stop_string():
    from osum_min.serve.openai_api import until_stop

    assert until_stop("hello wor", ["world"], final=False) == ("hello ", False)
    assert until_stop("hello wor", ["world"], final=True) == ("hello wor", False)
    assert until_stop("hello world!", ["world", "lo"], final=False) == ("hel", True)
    assert until_stop("abc", [], final=False) == ("abc", False)


def test_size_messages_tell_the_figures_apart():
    from osum_min.serve.openai_api import too_large

    assert "is 2 MB; this server takes up to 1 MB" in str(too_large("x", 2**21, 2**20))
    near = str(too_large("x", 110_000, 104_858))
    assert "110,000 bytes" in near and "104,858 bytes" in near


# ---- memory bounded by the caps ----


def flac(seconds: float, rate: int = 8000, channels: int = 1) -> bytes:
    """Silence, written a block at a time (2 h of it is 180 KB)."""
    buffer, block = io.BytesIO(), 2**20 // channels
    with soundfile.SoundFile(buffer, "w", rate, channels, format="FLAC") as out:
        for start in range(0, int(seconds * rate), block):
            frames = min(block, int(seconds * rate) - start)
            out.write(np.zeros((frames, channels), np.int16))
    return buffer.getvalue()


def test_hours_of_silence_are_refused_from_the_header_before_decoding(
    served, monkeypatch
):
    import osum_min.audio as audio

    def never(*args):
        raise AssertionError("decoded")

    monkeypatch.setattr(audio, "_read_mono", never)
    reply = post(
        served, "/v1/audio/transcriptions", files={"file": ("a.flac", flac(7200))}
    )
    error = reply.json()["error"]
    assert reply.status_code == 413 and error["param"] == "file"
    assert "7200.0 s of audio is over the limit of 20 s" in error["message"]


def test_many_channels_are_read_in_bounded_pieces():
    import tracemalloc

    data = flac(15, rate=48000, channels=8)  # 23 MB as float32 samples of 8 channels
    tracemalloc.start()
    wav = load_audio(io.BytesIO(data), max_seconds=20)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(wav) == 15 * SAMPLE_RATE and peak < 12 * 2**20, peak


def test_a_header_that_understates_is_cut_while_decoding(monkeypatch):
    """A header saying 1 frame (streamed formats may say anything): decoding stops past the cap."""
    from osum_min.audio import AudioTooLong

    real, asked = soundfile.SoundFile.frames, []

    def frames(self):  # the first question is the header's; then soundfile's own reads
        asked.append(1)
        return 1 if len(asked) == 1 else real.fget(self)

    monkeypatch.setattr(soundfile.SoundFile, "frames", property(frames))
    with pytest.raises(
        AudioTooLong, match="more than 1 s of audio is over the limit of 1 s"
    ):
        load_audio(io.BytesIO(flac(30)), max_seconds=1)


def raw_connection(url):
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def reply_of(connection, seconds: float = 5) -> bytes:
    """What the server answers, up to its JSON body's end, within `seconds`."""
    connection.settimeout(seconds)
    answer = b""
    while not answer.endswith(b"}") and (piece := connection.recv(4096)):
        answer += piece
    return answer


def test_a_chunked_upload_is_refused_as_soon_as_it_passes_the_cap(served):
    """No Content-Length: the bytes are counted as they come, 413 before the body ends."""
    connection = raw_connection(served[0])
    connection.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-test\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    piece = b"x" * 2**16
    for _ in range(2**21 // len(piece)):  # 2 MB of a cap of 1.4 MB, and no last chunk
        connection.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
    answer = reply_of(connection)  # the body never ends: only an early refusal answers
    connection.close()
    assert answer.startswith(b"HTTP/1.1 413") and b"upload_too_large" in answer, answer[
        :200
    ]


# ---- the transport: idle and slow clients, many connections, the log ----


def four_connections(served, read_timeout_s: float):
    """A server of 4 connections at most, on the same model."""
    config = ServerConfig(
        api_key=KEY,
        max_new_tokens=TOKENS,
        read_timeout_s=read_timeout_s,
        max_connections=4,
    )
    return running(create_app(served[1], config))


@pytest.fixture(scope="module")
def strict(served):
    """Short timeouts (1 s) and few connections."""
    with four_connections(served, 1) as url:
        yield url


@pytest.fixture(scope="module")
def bounded(served):
    """Few connections, and a read timeout (30 s) that closes nothing here."""
    with four_connections(served, 30) as url:
        yield url


def closed_within(connection, seconds: float) -> bool:
    connection.settimeout(seconds)
    try:
        return connection.recv(1024) == b""
    except (TimeoutError, socket.timeout):
        return False
    except ConnectionResetError:
        return True


def test_idle_and_slow_connections_are_closed(strict):
    idle = raw_connection(strict)
    assert closed_within(idle, 5)
    slow = raw_connection(strict)  # headers a byte at a time, 0.3 s apart
    started = time.monotonic()
    with contextlib.suppress(OSError):
        for byte in b"GET /health HTTP/1.1\r\nHost: x\r\n":
            slow.send(bytes([byte]))
            time.sleep(0.3)
    assert closed_within(slow, 5) and time.monotonic() - started < 8
    assert httpx.get(strict + "/health", timeout=10).status_code == 200


def stalled_request(url) -> socket.socket:
    """A connection mid-request: its headers sent, its body not."""
    connection = raw_connection(url)
    connection.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-test\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    )
    return connection


def test_a_stalled_body_is_a_408(strict):
    answer = reply_of(stalled_request(strict))
    assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer, answer[
        :200
    ]


def test_waiting_connections_past_the_bound_are_closed_oldest_first(bounded):
    idle = [raw_connection(bounded) for _ in range(4)]
    time.sleep(0.2)  # all four taken in, in order
    # the fifth, asking, is served: the oldest waiting one makes room
    assert httpx.get(bounded + "/health", timeout=10).status_code == 200
    assert closed_within(idle[0], 2)
    assert not any(closed_within(connection, 0.2) for connection in idle[1:])
    for connection in idle:
        connection.close()


def test_past_the_bound_with_every_connection_mid_request_is_a_json_503(bounded):
    busy = [stalled_request(bounded) for _ in range(4)]
    time.sleep(0.2)
    answer = httpx.get(bounded + "/health", timeout=10)
    assert answer.status_code == 503, answer.text
    error = answer.json()["error"]
    assert (
        error["code"] == "too_many_connections" and "4 connections" in error["message"]
    )
    for connection in busy:
        connection.close()
    deadline = time.monotonic() + 5
    while httpx.get(bounded + "/health", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the server did not recover"
        time.sleep(0.1)


def test_1100_idle_connections_leave_the_server_answering(served):
    # the flood: 1,100 connections that never send. The server keeps at most
    # max_connections of them (here 32), so it never runs out of file descriptors, and
    # answers a client at once though its read timeout (30 s) has closed none of them
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 1100 + 500  # this process holds both ends, and its own files
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"the hard limit of open files here is {hard}, under {needed}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))
    config = ServerConfig(max_new_tokens=TOKENS, read_timeout_s=30, max_connections=32)
    idle = []
    try:
        with running(create_app(served[1], config)) as url:
            idle += [raw_connection(url) for _ in range(1100)]
            started = time.monotonic()
            assert httpx.get(url + "/health", timeout=10).status_code == 200
            assert time.monotonic() - started < 1.0
            closed = sum(closed_within(connection, 0.01) for connection in idle)
            assert closed >= 1100 - 32, closed
    finally:  # a failure must not leave 1,100 sockets and the raised limit behind
        for connection in idle:
            connection.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_repeated_log_line_is_written_once_per_window():
    import logging

    from osum_min.serve.server import RepeatLimit

    limit = RepeatLimit(window=60)
    records = [
        logging.LogRecord(
            "asyncio", logging.ERROR, "", 0, "Too many open files", None, None
        )
        for _ in range(1000)
    ]
    assert sum(map(limit.filter, records)) == 1
    other = logging.LogRecord("asyncio", logging.ERROR, "", 0, "another", None, None)
    assert limit.filter(other)
    for name in ("asyncio", "uvicorn.error"):  # where uvicorn_config put it, once
        filters = logging.getLogger(name).filters
        assert sum(isinstance(f, RepeatLimit) for f in filters) == 1


def test_a_10_mb_prompt_does_not_stall_the_event_loop(served):
    config = ServerConfig(max_upload_mb=16, max_new_tokens=TOKENS)
    with running(create_app(served[1], config)) as url:
        body = json.dumps(
            chat_with(messages=audio_message(AUDIO[1], "word " * 2_000_000))
        )
        worst, done = 0.0, []

        def big():
            done.append(
                httpx.post(url + "/v1/chat/completions", content=body, timeout=120)
            )

        thread = threading.Thread(target=big)
        thread.start()
        while thread.is_alive():
            started = time.monotonic()
            assert httpx.get(url + "/health", timeout=30).status_code == 200
            worst = max(worst, time.monotonic() - started)
            time.sleep(0.05)
        assert (
            done[0].status_code == 422
            and done[0].json()["error"]["param"] == "messages"
        )
        assert worst < 1.0, worst


# ---- keys ----


def test_a_non_ascii_key_works(served):
    key = "clé-ü-密钥"
    with running(create_app(served[1], ServerConfig(api_key=key))) as url:
        sent = {"Authorization": b"Bearer " + key.encode()}
        assert (
            httpx.get(url + "/v1/models", headers=sent, timeout=10).status_code == 200
        )
        wrong = {"Authorization": b"Bearer " + "cle-u".encode()}
        assert (
            httpx.get(url + "/v1/models", headers=wrong, timeout=10).status_code == 401
        )


@pytest.mark.parametrize("where", ["flag", "environment"])
# noqa: F811
def test_an_empty_key_is_refused_at_start_up(
    weights_with_tokenizer, capsys, monkeypatch, where
):
    import infer

    flags = ["--api-key", ""] if where == "flag" else []
    monkeypatch.setenv("OSUM_API_KEY", "")
    code = infer.main(["--serve", "--weights", str(weights_with_tokenizer), *flags])
    err = capsys.readouterr().err.strip()
    message = "--api-key is '', not a key" if flags else "OSUM_API_KEY is set but empty"
    assert code == 2 and "\n" not in err and message in err, err


# noqa: F811
def test_infer_serve_says_it_is_loading_from_the_start(
    weights_with_tokenizer, capsys, monkeypatch
):
    import infer

    monkeypatch.delenv("OSUM_API_KEY", raising=False)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: None)
    assert infer.main(["--serve", "--weights", str(weights_with_tokenizer)]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("infer.py: loading ") and "loaded in" in lines[1]


def test_infer_serve_names_missing_weights_as_infer_does(tmp_path, capsys):
    import infer

    assert infer.main(["--serve", "--weights", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"no OSUM weights in {tmp_path / 'nothing'}/" in err


# ---- the conversation format ----


@pytest.mark.parametrize(
    "field, value, problem",
    [
        ("max_upload_mb", float("inf"), "not a finite number"),
        ("batch_size", 0, "below 1"),
        ("timeout_s", -1.0, "not above 0"),
    ],
)
def test_server_config_values_are_checked_where_it_is_built(field, value, problem):
    from osum_min.config_check import ConfigError

    with pytest.raises(ConfigError, match=f"^{field} is .*, {problem}$"):
        ServerConfig(**{field: value})


def test_conversation_kinds():
    audio = {"type": "audio", "audio": "a.wav"}
    analysis = to_request(
        [{"role": "user", "content": [audio, {"type": "text", "text": "describe"}]}]
    )
    assert (
        analysis.task.name == "prompt"
        and analysis.task.prompt == "describe"
        and analysis.audio == "a.wav"
    )
    assert (
        to_request(
            [{"role": "system", "content": ""}, {"role": "user", "content": [audio]}]
        ).task
        is TASKS["sttc"]
    )
    samples = to_request(
        [{"role": "user", "content": [{"type": "audio", "audio": np.zeros(16000)}]}],
        sample_rate=16000,
    )
    assert samples.sample_rate == 16000
    data = to_request(
        [
            {
                "role": "user",
                "content": [
                    {
                        "type": "audio_url",
                        "audio_url": {
                            "url": "data:audio/wav;base64,"
                            + base64.b64encode(b"RIFF").decode()
                        },
                    }
                ],
            }
        ],
        remote=True,
    )
    assert data.audio == b"RIFF"


@pytest.mark.parametrize(
    "conversation, words",
    [
        (
            [{"role": "user", "content": [{"type": "audio", "audio": "a.wav"}] * 2}],
            "exactly one audio clip",
        ),
        ([{"role": "user", "content": "hello"}], "no clip"),
        (
            [
                {"role": "user", "content": [{"type": "audio", "audio": "a.wav"}]},
                {"role": "user", "content": "and?"},
            ],
            "go in one user message",
        ),
        (
            [
                {"role": "user", "content": [{"type": "audio", "audio": "a.wav"}]},
                {"role": "assistant", "content": "x"},
            ],
            "assistant turns",
        ),
        (
            [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "audio", "audio": "a.wav"}]},
            ],
            "no system prompt",
        ),
        # remote
        (
            [{"role": "user", "content": [{"type": "audio", "audio": "a.wav"}]}],
            "send audio as input_audio",
        ),
        # remote
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "audio_url", "audio_url": "/etc/passwd"}],
                }
            ],
            "never fetches",
        ),
    ],
)
def test_conversations_osum_cannot_take_are_refused_in_one_line(conversation, words):
    remote = words in ("send audio as input_audio", "never fetches")
    with pytest.raises(ConversationError, match=words) as raised:
        to_request(conversation, remote=remote)
    assert "\n" not in str(raised.value)


# ---- the batcher: a full queue, dropped jobs, a failing batch ----


class Gate:
    """A stand-in pipeline whose run waits for `open` and records what it was given (or raises `fail`)."""

    def __init__(self, fail=None):
        self.open, self.seen, self.fail = threading.Event(), [], fail

    def run(self, requests, on_token=None, keep_going=None):
        self.open.wait(10)
        self.seen.append([r.name for r in requests])
        if self.fail:
            raise self.fail
        for index, request in enumerate(requests):
            yield index, request.name


def test_batcher_queue_full_and_dropped_jobs():
    from osum_min.serve.batcher import Batcher, QueueFull

    async def scenario():
        gate = Gate()
        batcher = Batcher(gate, batch_size=4, max_queue=2, wait_s=0.001)
        first = batcher.submit(Request(b"", name="first"))
        while batcher.queue.qsize():  # the worker took it and waits at the gate
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        gone, kept = (
            batcher.submit(Request(b"", name="gone")),
            batcher.submit(Request(b"", name="kept")),
        )
        with pytest.raises(QueueFull):
            batcher.submit(Request(b"", name="one too many"))
        gone.cancelled = True  # its client went away while it waited
        gate.open.set()
        assert await asyncio.wait_for(first.answer, 10) == "first"
        assert await asyncio.wait_for(kept.answer, 10) == "kept"
        return gate.seen

    assert asyncio.run(scenario()) == [["first"], ["kept"]]


def test_batcher_waits_for_requests_still_arriving():
    """A burst of clients reaches the queue milliseconds apart (each upload read and checked first): a batch about
    to start waits for the requests the server is still reading, not only `wait_s`."""
    from osum_min.serve.batcher import Batcher

    async def scenario(still_arriving: bool):
        gate = Gate()
        gate.open.set()
        batcher = Batcher(gate, batch_size=4, wait_s=0.005, max_wait_s=2.0)
        batcher.arriving = int(still_arriving)  # the second request is being read
        first = batcher.submit(Request(b"", name="first"))
        await asyncio.sleep(0.1)
        second = batcher.submit(Request(b"", name="second"))
        batcher.arriving = 0
        await asyncio.wait_for(asyncio.gather(first.answer, second.answer), 10)
        return gate.seen

    assert asyncio.run(scenario(True)) == [["first", "second"]]
    assert asyncio.run(scenario(False)) == [["first"], ["second"]]


def test_served_requests_count_as_arriving_until_queued(served):
    """Every request the server reads is counted while it is read and checked, and uncounted once queued or refused."""
    batcher = served[2].state.batcher
    with AUDIO[0].open("rb") as audio:
        assert (
            post(
                served,
                "/v1/audio/transcriptions",
                files={"file": audio},
                data={"model": "osum"},
            ).status_code
            == 200
        )
    assert (
        post(
            served,
            "/v1/audio/transcriptions",
            files={"file": ("x.wav", b"not audio")},
            data={"model": "osum"},
        ).status_code
        == 400
    )
    assert (
        post(
            served,
            "/v1/chat/completions",
            json={"model": "osum", "messages": audio_message(AUDIO[1])},
        ).status_code
        == 200
    )
    assert batcher.arriving == 0


def test_batcher_survives_a_failing_batch():
    from osum_min.serve.batcher import Batcher

    async def scenario():
        gate = Gate(fail=RuntimeError("boom\nsecond line"))
        gate.open.set()
        batcher = Batcher(gate, batch_size=2)
        answer = await asyncio.wait_for(
            batcher.submit(Request(b"", name="x")).answer, 10
        )
        gate.fail = None
        return answer, await asyncio.wait_for(
            batcher.submit(Request(b"", name="y")).answer, 10
        )

    failed, after = asyncio.run(scenario())
    error = failed.error
    assert (
        error.kind == "decoding"
        and "boom second line" in str(error)
        and "\n" not in str(error)
    )
    assert after == "y"


# ---- timeouts and clients that go away: the work stops ----


class Slow(Pipeline):
    """The real pipeline, each decoding step 50 ms slower, counting the steps it was asked to take."""

    def __init__(self, model, tokenizer):
        super().__init__(model, tokenizer)
        self.steps = 0

    def run(self, requests, on_token=None, on_batch=None, keep_going=None):
        def slowly():
            time.sleep(0.05)
            self.steps += 1
            return keep_going is None or keep_going()

        return super().run(requests, on_token, on_batch, slowly)


def settled(pipeline: Slow) -> int:
    """The step count once the worker has stopped taking steps."""
    while True:
        steps = pipeline.steps
        time.sleep(0.3)
        if pipeline.steps == steps:
            return steps


@pytest.fixture(scope="module")
def slow_pipeline(served):
    return Slow(served[1].model, served[1].tokenizer)


def test_a_request_past_its_timeout_is_503_and_its_decoding_stops(slow_pipeline):
    with running(
        create_app(slow_pipeline, ServerConfig(max_new_tokens=64, timeout_s=0.5))
    ) as url:
        started = slow_pipeline.steps
        reply = httpx.post(
            url + "/v1/audio/transcriptions",
            files={"file": AUDIO[0].open("rb")},
            data={"model": "osum"},
            timeout=60,
        )
        assert reply.status_code == 503 and reply.json()["error"]["code"] == "timeout"
        assert "\n" not in reply.json()["error"]["message"]
        # 64 beam steps take 3.2 s; the batch stops at the first step after the 0.5 s timeout (polled every 0.25 s)
        assert settled(slow_pipeline) - started < 30


def test_a_stream_whose_client_leaves_stops_decoding(slow_pipeline):
    with running(create_app(slow_pipeline, ServerConfig(max_new_tokens=64))) as url:
        started = slow_pipeline.steps
        body = {
            "model": "osum",
            "stream": True,
            "max_tokens": 64,
            "messages": audio_message(AUDIO[1], "describe"),
        }
        with httpx.stream(
            "POST", url + "/v1/chat/completions", json=body, timeout=60
        ) as reply:
            assert reply.status_code == 200
            for line in reply.iter_lines():
                chunk = json.loads(line[6:]) if line.startswith("data: {") else {}
                if any(
                    choice["delta"].get("content")
                    for choice in chunk.get("choices", [])
                ):
                    break  # the first token arrived: leave
        assert settled(slow_pipeline) - started < 30  # of 64
        with AUDIO[1].open("rb") as audio:  # and the server goes on serving
            reply = httpx.post(
                url + "/v1/audio/transcriptions",
                files={"file": audio},
                data={"model": "osum"},
                timeout=60,
            )
        assert reply.status_code == 200 and slow_pipeline.steps - started >= 64
