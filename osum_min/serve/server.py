"""An OpenAI-compatible HTTP server for OSUM (`python infer.py --serve`), on FastAPI + uvicorn (`pip install .[serve]`).

`POST /v1/audio/transcriptions` (OpenAI's multipart fields, an OSUM `task` field, json | text | srt | vtt |
verbose_json, word and segment times from the SRWT task), `POST /v1/chat/completions` (input_audio parts, the
seed's data: audio_url, `stream`), `GET /v1/models`, `GET /health`. Handlers read and check the upload (size,
duration, prompt) before queueing; one worker thread decodes what arrives together as one batch (batcher.py).
Every error is OpenAI-shaped JSON with one line of message; nothing a client sends can stop the server.
See docs/serving.md.
"""

import asyncio
import functools
import hmac
import json
import os
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, replace

from ..audio import SAMPLE_RATE
from .batcher import Batcher, QueueFull
from ..config_check import check_config
from .conversation import ConversationError, content, to_request
from ..model.generate import DEFAULT_DECODING
from .openai_api import (
    RESPONSE_FORMATS,
    ApiError,
    chat_decoding,
    error_body,
    finish_reason,
    number,
    request_error,
    streamed_text,
    transcription_body,
    usage,
)
from ..inference.pipeline import Answer, Pipeline, Request, RequestError, load_request_audio
from ..text.tasks import TASKS


@dataclass
class ServerConfig:
    model_name: str = "osum"
    api_key: str | None = None  # required as `Authorization: Bearer KEY` on /v1 routes when set
    batch_size: int = 8
    max_upload_mb: float = 25.0  # OpenAI's own cap for transcriptions
    max_audio_seconds: float = 600.0
    max_queue: int = 64
    timeout_s: float = 600.0  # per request, queueing and decoding
    wait_ms: float = 25.0  # how long a batch waits for one more request after the last
    max_wait_ms: float = (
        200.0  # how long at most it waits for requests the server is still reading and checking
    )
    max_new_tokens: int = (
        400  # transcriptions' length, and chat's default and upper bound for max_tokens
    )

    def __post_init__(self):
        check_config(self)  # whole numbers of at least 1, finite times and sizes above 0


def create_app(pipeline: Pipeline, config: ServerConfig = ServerConfig()):
    """The FastAPI app serving `pipeline` (a model with a tokenizer); starts the batching worker."""
    from fastapi import FastAPI, Request as HttpRequest
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    if pipeline.tokenizer is None:
        raise ValueError(
            "the server answers in text: the model needs a tokenizer (convert with --tokenizer DIR)"
        )
    app = FastAPI(title="osum-min", docs_url=None, redoc_url=None, openapi_url=None)
    batcher = Batcher(
        pipeline,
        config.batch_size,
        config.max_queue,
        config.wait_ms / 1000,
        config.max_wait_ms / 1000,
    )
    app.state.batcher = batcher
    max_bytes = int(config.max_upload_mb * 2**20)
    eos = pipeline.model.config.eod_id

    @app.exception_handler(ApiError)
    async def api_error(_, err: ApiError):
        return JSONResponse(error_body(str(err), err.type, err.code), status_code=err.status)

    @app.exception_handler(HTTPException)
    async def http_error(_, err: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
        return JSONResponse(
            error_body(err.detail, "invalid_request_error", code), status_code=err.status_code
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(_, err: RequestValidationError):
        return JSONResponse(
            error_body(
                f"invalid request: {err.errors()[:1]}", "invalid_request_error", "invalid_request"
            ),
            status_code=400,
        )

    @app.exception_handler(Exception)
    async def unexpected(_, err: Exception):
        traceback.print_exc()  # the log keeps the traceback; the client gets one line
        return JSONResponse(
            error_body(
                f"internal error: {type(err).__name__}: {err}", "server_error", "internal_error"
            ),
            status_code=500,
        )

    @app.middleware("http")
    async def guard(http: HttpRequest, call_next):
        """The API key, and the upload cap by Content-Length before any body is read."""
        try:
            if http.url.path.startswith("/v1/") and config.api_key is not None:
                given = http.headers.get("authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {config.api_key}".encode()):
                    raise ApiError(
                        401,
                        "missing or wrong API key: send Authorization: Bearer KEY",
                        "invalid_api_key",
                    )
            length = http.headers.get("content-length")
            if (
                length and length.isdigit() and int(length) > max_bytes * 4 // 3 + 2**16
            ):  # base64 and form fields
                raise ApiError(
                    413,
                    f"the request is {int(length) / 2**20:.1f} MB; this server takes uploads up "
                    f"to {config.max_upload_mb:g} MB",
                    "upload_too_large",
                )
        except ApiError as err:
            return await api_error(http, err)
        return await call_next(http)

    def check_model(name):
        if name not in (None, "", config.model_name):
            raise ApiError(
                404,
                f"model {str(name)[:80]!r} does not exist; this server serves "
                f"{config.model_name!r}",
                "model_not_found",
            )

    async def prepare(request: Request) -> Request:
        """The upload decoded (in a thread) and checked against the caps, and the prompt checked, before it queues."""
        if isinstance(request.audio, (bytes, bytearray)):
            if not request.audio:
                raise ApiError(400, f"{request.label}: the audio is empty", "invalid_audio")
            if len(request.audio) > max_bytes:
                raise ApiError(
                    413,
                    f"{request.label}: {len(request.audio) / 2**20:.1f} MB of audio; this server "
                    f"takes up to {config.max_upload_mb:g} MB",
                    "upload_too_large",
                )
        try:
            wav = await run_in_threadpool(load_request_audio, request, config.max_audio_seconds)
            checked = replace(request, audio=wav, sample_rate=SAMPLE_RATE)
            pipeline.prompt_ids(checked)
        except RequestError as err:
            raise request_error(err) from None
        return checked

    def arriving(handler):
        """The handler's request counts as arriving from its start until it is queued or fails, so that a batch
        about to start waits for it (batcher.py): clients that send together are decoded together."""

        @functools.wraps(handler)
        async def counted(http: HttpRequest):
            batcher.arriving += 1
            http.scope["osum_arriving"] = True
            try:
                return await handler(http)
            finally:
                arrived(http)

        return counted

    def arrived(http: HttpRequest):
        if http.scope.pop("osum_arriving", False):
            batcher.arriving -= 1

    def submit(http: HttpRequest, request: Request, stream: bool = False):
        try:
            return batcher.submit(request, stream)
        except QueueFull as err:
            raise ApiError(503, str(err), "queue_full", "server_error") from None
        finally:
            arrived(http)

    async def decode(http: HttpRequest, request: Request) -> Answer:
        """Queue the request and wait for its answer, dropping it when the client goes or the time is up."""
        job = submit(http, request)
        deadline = time.monotonic() + config.timeout_s
        try:
            while True:
                done, _ = await asyncio.wait([job.answer], timeout=0.25)
                if done:
                    break
                if await http.is_disconnected():
                    raise ApiError(400, "the client disconnected", "client_disconnected")
                if time.monotonic() > deadline:
                    raise ApiError(
                        503, f"no answer within {config.timeout_s:g} s", "timeout", "server_error"
                    )
        finally:
            job.cancelled = not job.answer.done()
        answer = job.answer.result()
        if answer.error is not None:
            raise request_error(answer.error)
        return answer

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": config.model_name, "queued": batcher.queue.qsize()}

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [
                {"id": config.model_name, "object": "model", "created": 0, "owned_by": "osum-min"}
            ],
        }

    @app.post("/v1/audio/transcriptions")
    @arriving
    async def transcriptions(http: HttpRequest):
        try:
            form = await http.form(max_files=1, max_fields=32)
        except Exception as err:  # noqa: BLE001  malformed multipart
            raise ApiError(
                400, f"not a multipart form ({type(err).__name__}: {err})", "invalid_form"
            ) from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise ApiError(
                400, "no audio: send the file in the multipart field `file`", "missing_file"
            )
        check_model(form.get("model"))
        response_format = form.get("response_format") or "json"
        if response_format not in RESPONSE_FORMATS:
            raise ApiError(
                400,
                f"response_format {response_format!r} is not one of {', '.join(RESPONSE_FORMATS)}",
                "invalid_response_format",
            )
        granularities = form.getlist("timestamp_granularities[]") + form.getlist(
            "timestamp_granularities"
        )
        if bad := [g for g in granularities if g not in ("word", "segment")]:
            raise ApiError(
                400, f"timestamp_granularities {bad[0]!r}: word or segment", "invalid_granularity"
            )
        timed = response_format in ("srt", "vtt", "verbose_json") or bool(granularities)
        task_name = form.get("task") or ("srwt" if timed else "asr")
        if task_name not in TASKS:
            raise ApiError(
                404, f"unknown task {task_name!r}: one of {', '.join(TASKS)}", "task_not_found"
            )
        task = TASKS[task_name]
        if (response_format in ("srt", "vtt") or granularities) and task.output != "srwt":
            raise ApiError(
                400,
                f"{response_format if response_format in ('srt', 'vtt') else 'timestamps'} "
                f"need the srwt task (timed words), not {task_name!r}",
                "needs_srwt",
            )
        if form.get(
            "prompt"
        ):  # OSUM's prompt is the instruction itself (Whisper's is preceding text)
            task = replace(task, prompt=form["prompt"])
        decoding = replace(DEFAULT_DECODING, max_new_tokens=config.max_new_tokens)
        temperature = number(form.get("temperature"), "temperature", 0.0, 2.0)
        if temperature:
            decoding = replace(decoding, num_beams=1, do_sample=True, temperature=temperature)
        name = os.path.basename(upload.filename or "") or "file"
        request = await prepare(Request(await upload.read(), task=task, config=decoding, name=name))
        body = transcription_body(await decode(http, request), response_format, granularities)
        if isinstance(body, str):
            media = {"srt": "application/x-subrip", "vtt": "text/vtt"}.get(
                response_format, "text/plain"
            )
            return PlainTextResponse(body, media_type=f"{media}; charset=utf-8")
        return body

    @app.post("/v1/chat/completions")
    @arriving
    async def chat_completions(http: HttpRequest):
        try:
            body = await http.json()
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "the body is not JSON", "invalid_json") from None
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            raise ApiError(400, "the body needs `messages`, a list of messages", "invalid_request")
        check_model(body.get("model"))
        if body.get("n", 1) != 1:
            raise ApiError(400, "n must be 1: OSUM answers once per request", "invalid_n")
        stream = bool(body.get("stream"))
        decoding = chat_decoding(body, stream, config.max_new_tokens)
        try:
            request = to_request(body["messages"], decoding, remote=True, name="input_audio")
        except ConversationError as err:
            raise ApiError(400, str(err), "unsupported_conversation") from None
        request = await prepare(request)
        created, ident = int(time.time()), f"chatcmpl-{uuid.uuid4().hex}"
        if not stream:
            answer = await decode(http, request)
            return {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": config.model_name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content(answer)},
                        "finish_reason": finish_reason(answer, decoding, eos),
                    }
                ],
                "usage": usage(answer),
            }
        job = submit(http, request, stream=True)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(
            events(job, request, decoding, ident, created, include_usage),
            media_type="text/event-stream",
        )

    async def events(job, request, decoding, ident, created, include_usage):
        """Server-sent events in OpenAI's chunk format: the role, content deltas, the finish, usage, [DONE]."""

        def chunk(delta, finish=None, **extra):
            return (
                "data: "
                + json.dumps(
                    {
                        "id": ident,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": config.model_name,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                        **extra,
                    },
                    ensure_ascii=False,
                )
                + "\n\n"
            )

        decoder, text, sent = pipeline.tokenizer.stream_decoder(), "", ""
        deadline = time.monotonic() + config.timeout_s
        try:
            yield chunk({"role": "assistant", "content": ""})
            while True:
                item = await asyncio.wait_for(
                    job.tokens.get(), max(0.01, deadline - time.monotonic())
                )
                if isinstance(item, int):
                    text += decoder.push(item)
                    visible = streamed_text(request.task, text, final=False)
                elif isinstance(item, Answer) and item.error is None:
                    text += decoder.finish()
                    visible = streamed_text(request.task, text, final=True)
                else:
                    err = request_error(item.error)
                    yield "data: " + json.dumps(error_body(str(err), err.type, err.code)) + "\n\n"
                    break
                if visible.startswith(sent) and len(visible) > len(sent):
                    yield chunk({"content": visible[len(sent) :]})
                    sent = visible
                if isinstance(item, Answer):
                    yield chunk({}, finish_reason(item, decoding, eos))
                    if include_usage:
                        yield (
                            "data: "
                            + json.dumps(
                                {
                                    "id": ident,
                                    "object": "chat.completion.chunk",
                                    "created": created,
                                    "model": config.model_name,
                                    "choices": [],
                                    "usage": usage(item),
                                }
                            )
                            + "\n\n"
                        )
                    break
        except asyncio.TimeoutError:
            yield (
                "data: "
                + json.dumps(
                    error_body(
                        f"no answer within {config.timeout_s:g} s", "server_error", "timeout"
                    )
                )
                + "\n\n"
            )
        finally:
            job.cancelled = (
                True  # a client that went away mid-stream: its job is dropped if not yet decoding
            )
        yield "data: [DONE]\n\n"

    return app


def serve(
    weights,
    host: str = "127.0.0.1",
    port: int = 8000,
    device=None,
    dtype=None,
    compile=None,
    quantize=None,
    config: ServerConfig = ServerConfig(),
) -> int:
    """Load once and serve until interrupted (infer.py --serve)."""
    try:
        import uvicorn  # noqa: F401
        import fastapi  # noqa: F401
        import multipart  # noqa: F401
    except ImportError as err:
        print(
            f"infer.py: error: the server needs FastAPI, uvicorn and python-multipart: pip install .[serve] "
            f"({err.name} is missing)",
            file=sys.stderr,
        )
        return 2
    from ..model.osum import load_for_inference
    from ..text.tokenizer import tokenizer_or_none

    tokenizer = tokenizer_or_none(weights)
    if tokenizer is None:
        print(
            f"infer.py: error: {weights}/ has no tokenizer; the server answers in text (convert with "
            "--tokenizer DIR)",
            file=sys.stderr,
        )
        return 2
    try:
        model = load_for_inference(
            weights, tokenizer, device=device, dtype=dtype, compile=compile, quantize=quantize
        )
    except (OSError, ValueError, RuntimeError) as err:
        print(
            f"infer.py: error: cannot load {weights}/: {' '.join(str(err).split())}",
            file=sys.stderr,
        )
        return 2
    pipeline = Pipeline(model, tokenizer, config.batch_size, config.max_audio_seconds)
    config = replace(
        config,
        api_key=config.api_key or os.environ.get("OSUM_API_KEY") or None,
        model_name=model.config.name,  # osum-mini answers as itself, never as OSUM
    )
    import uvicorn

    uvicorn.run(create_app(pipeline, config), host=host, port=port, log_level="info")
    return 0
