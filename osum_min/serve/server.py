"""An OpenAI-compatible HTTP server for OSUM (`python infer.py --serve`), on FastAPI + uvicorn (`pip install .[serve]`).

`POST /v1/audio/transcriptions` (OpenAI's multipart fields, an OSUM `task` field, json | text | srt | vtt |
verbose_json, word and segment times from the SRWT task), `POST /v1/chat/completions` (input_audio parts, the
seed's data: audio_url, `stream`), `GET /v1/models`, `GET /health`. Handlers read and check the upload (size,
duration, prompt) before queueing; one worker thread decodes what arrives together as one batch (batcher.py).
Every error is OpenAI-shaped JSON with one line of message; nothing a client sends can stop the server.
The routes are module-level functions of one APIRouter; what they share (the pipeline, its batcher, the caps)
is a `Server` in `app.state.server`. See docs/serving.md.
"""

import asyncio
import functools
import hmac
import json
import logging
import os
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, replace

try:
    import multipart  # noqa: F401  (starlette reads forms with it)
    import h11
    import uvicorn
    from fastapi import APIRouter, FastAPI, Request as HttpRequest
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from uvicorn.protocols.http.h11_impl import H11Protocol
except ImportError as err:  # infer.py --serve reports it in one line
    raise ImportError(
        "the server needs FastAPI, uvicorn and python-multipart: pip install .[serve] "
        f"({err.name} is missing)",
        name=err.name,
    ) from None

from ..audio import SAMPLE_RATE
from .batcher import Batcher, Job, QueueFull
from ..config_check import ConfigError, check_config
from .conversation import ConversationError, content, to_request
from ..model.generate import GenerationConfig
from .fields import (
    chat_decoding,
    chat_fields,
    chat_logprobs,
    form_fields,
    transcription_decoding,
)
from .openai_api import (
    RESPONSE_FORMATS,
    ApiError,
    error_body,
    finish_reason,
    logprobs_body,
    request_error,
    streamed_text,
    too_large,
    transcription_body,
    until_stop,
    usage,
)
from ..inference.pipeline import (
    Answer,
    Pipeline,
    Request,
    RequestError,
    load_request_audio,
)
from ..text.tasks import TASKS


@dataclass
class ServerConfig:
    model_name: str = "osum"
    # required as `Authorization: Bearer KEY` on /v1 routes when set
    api_key: str | None = None
    batch_size: int = 8
    max_upload_mb: float = 25.0  # OpenAI's own cap for transcriptions
    max_audio_seconds: float = 600.0
    max_queue: int = 64
    timeout_s: float = 600.0  # per request, queueing and decoding
    wait_ms: float = 25.0  # how long a batch waits for one more request after the last
    # how long at most a batch waits for requests the server is still reading and checking
    max_wait_ms: float = 200.0
    # transcriptions' length, and chat's default and upper bound for max_tokens
    max_new_tokens: int = 400
    # a request's headers, and each piece of its body, must arrive within this; an idle
    # connection is closed after it (uvicorn's keep-alive timeout)
    read_timeout_s: float = 10.0
    # past it, waiting connections are closed, oldest first; past it with none waiting,
    # or with this many requests in flight, 503 (TimedH11)
    max_connections: int = 256

    def __post_init__(self):
        # whole numbers of at least 1, finite times and sizes above 0
        check_config(self)
        if self.api_key is not None and (
            not isinstance(self.api_key, str) or not self.api_key
        ):
            raise ConfigError(
                "api_key",
                self.api_key,
                "not a key (an unset variable?): give one, or none at all",
            )


class Server:
    """What the routes share: the pipeline, its batcher and the caps (`app.state.server`)."""

    def __init__(self, pipeline: Pipeline, config: ServerConfig):
        if pipeline.tokenizer is None:
            raise ValueError(
                "the server answers in text: the model needs a tokenizer "
                "(convert with --tokenizer DIR)"
            )
        self.pipeline, self.config = pipeline, config
        self.batcher = Batcher(
            pipeline,
            config.batch_size,
            config.max_queue,
            config.wait_ms / 1000,
            config.max_wait_ms / 1000,
        )
        self.max_bytes = int(config.max_upload_mb * 2**20)
        # what a body may hold besides the audio: base64 (4/3) and the other fields
        self.max_body = self.max_bytes * 4 // 3 + 2**16
        self.eos = pipeline.model.config.eod_id
        # uploads decoded at once: a batch's worth bounds their memory (each up to the caps)
        self.preparing = asyncio.Semaphore(config.batch_size)

    def check_model(self, name):
        if name not in (None, "", self.config.model_name):
            raise ApiError(
                404,
                f"model {str(name)[:80]!r} does not exist; this server serves "
                f"{self.config.model_name!r}",
                "model_not_found",
                param="model",
            )

    async def prepare(self, request: Request, param: str) -> Request:
        """The request checked before it queues, in a worker thread (decoding audio and
        tokenising a long prompt would stall the event loop): the upload's size, its
        duration from the header, its samples, the prompt. `param`: the field holding them."""
        try:
            async with self.preparing:
                return await run_in_threadpool(self.checked, request, param)
        except RequestError as err:
            raise request_error(err, param) from None

    def checked(self, request: Request, param: str) -> Request:
        if isinstance(request.audio, (bytes, bytearray)):
            if not request.audio:
                raise RequestError(request.label, "the audio is empty", "audio")
            size, cap = len(request.audio), self.max_bytes
            if size > cap:
                raise too_large(f"{request.label}: the audio", size, cap, param)
        wav = load_request_audio(request, self.config.max_audio_seconds)
        checked = replace(request, audio=wav, sample_rate=SAMPLE_RATE)
        self.pipeline.prompt_ids(checked)
        return checked

    def arrived(self, http: HttpRequest):
        if http.scope.pop("osum_arriving", False):
            self.batcher.arriving -= 1

    def submit(self, http: HttpRequest, request: Request, stream: bool = False) -> Job:
        try:
            return self.batcher.submit(request, stream)
        except QueueFull as err:
            raise ApiError(503, str(err), "queue_full", "server_error") from None
        finally:
            self.arrived(http)

    async def decode(self, http: HttpRequest, request: Request, param: str) -> Answer:
        """Queue the request and wait for its answer, dropping it when the client goes or
        the time is up."""
        job = self.submit(http, request)
        deadline = time.monotonic() + self.config.timeout_s
        try:
            while True:
                done, _ = await asyncio.wait([job.answer], timeout=0.25)
                if done:
                    break
                if await http.is_disconnected():
                    raise ApiError(
                        400, "the client disconnected", "client_disconnected"
                    )
                if time.monotonic() > deadline:
                    raise self.timeout()
        finally:
            job.cancelled = not job.answer.done()
        answer = job.answer.result()
        if answer.error is not None:
            raise request_error(answer.error, param)
        return answer

    def timeout(self) -> ApiError:
        seconds = self.config.timeout_s
        return ApiError(
            503, f"no answer within {seconds:g} s", "timeout", "server_error"
        )


def server_of(http: HttpRequest) -> Server:
    return http.app.state.server


def arriving(handler):
    """The handler's request counts as arriving from its start until it is queued or fails,
    so that a batch about to start waits for it (batcher.py): clients that send together
    are decoded together."""

    @functools.wraps(handler)
    async def counted(http: HttpRequest):
        server = server_of(http)
        server.batcher.arriving += 1
        http.scope["osum_arriving"] = True
        try:
            return await handler(http)
        finally:
            server.arrived(http)

    return counted


# ---- errors: OpenAI-shaped, one line ----


async def api_error(_, err: ApiError):
    return JSONResponse(err.body(), status_code=err.status)


async def http_error(_, err: HTTPException):
    code = {404: "not_found", 405: "method_not_allowed"}.get(
        err.status_code, "http_error"
    )
    return JSONResponse(
        error_body(err.detail, "invalid_request_error", code),
        status_code=err.status_code,
    )


async def unexpected(_, err: Exception):
    traceback.print_exc()  # the log keeps the traceback; the client gets one line
    message = f"internal error: {type(err).__name__}: {err}"
    return JSONResponse(
        error_body(message, "server_error", "internal_error"), status_code=500
    )


# ---- the transport: the key, the body's size and pace ----


class Guard:
    """ASGI middleware before any body is read: the API key (compared as UTF-8 bytes, so a
    non-ASCII key works), the upload cap by Content-Length, and then the body's bytes counted
    as they stream (a chunked upload has no Content-Length): 413 as soon as over, 408 when a
    piece of the body takes longer than the read timeout."""

    def __init__(self, app, server: Server):
        self.app, self.server = app, server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        try:
            self.check_key(scope["path"], headers.get(b"authorization", b""))
            length = headers.get(b"content-length", b"")
            if length.isdigit() and int(length) > self.server.max_body:
                raise too_large("the request", int(length), self.server.max_body)
        except ApiError as err:
            return await JSONResponse(err.body(), err.status)(scope, receive, send)
        await self.app(scope, self.capped(receive), send)

    def check_key(self, path: str, given: bytes):
        key = self.server.config.api_key
        if not path.startswith("/v1/") or key is None:
            return
        if not hmac.compare_digest(given, b"Bearer " + key.encode()):
            raise ApiError(
                401,
                "missing or wrong API key: send Authorization: Bearer KEY",
                "invalid_api_key",
            )

    def capped(self, receive):
        state = {"read": 0, "more": True}
        timeout = self.server.config.read_timeout_s

        async def counted():
            if not state["more"]:  # the body is in: waiting for the client to go
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout)
            except asyncio.TimeoutError:
                raise ApiError(
                    408,
                    f"the request body stalled for {timeout:g} s",
                    "request_timeout",
                ) from None
            if message["type"] == "http.request":
                state["read"] += len(message.get("body", b""))
                state["more"] = message.get("more_body", False)
                if state["read"] > self.server.max_body:
                    raise too_large("the request", state["read"], self.server.max_body)
            return message

        return counted


class TimedH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with the transport bounded.

    - The keep-alive timer also runs from a connection's opening until a request's headers
      are complete: uvicorn times a connection out only between requests, so one that never
      sends (or sends its headers a byte at a time) would hold its socket for ever.
    - At most `limit_concurrency` connections: past it, the longest-open ones waiting for a
      request are closed, so a flood of idle sockets (1,100 of them ran the process out of
      file descriptors) never locks out a client that asks.
    - Past it with none waiting (every one mid-request), or with that many requests in
      flight, the request is answered 503 in the API's JSON (uvicorn's own is plain text).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.opened = time.monotonic()
        self.bound, self.limit_concurrency = self.limit_concurrency, None
        self.app = functools.partial(self.bounded, self.app)

    def connection_made(self, transport):
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )
        if self.bound is not None:
            self.close_waiting_past_bound()

    def waiting(self) -> bool:
        """Before its first request or between two: nothing in flight to lose."""
        return self.conn.their_state is self.conn.our_state is h11.IDLE

    def live(self) -> list["TimedH11"]:
        """The connections not already closing (a closed one leaves the set a moment later)."""
        return [c for c in self.connections if not c.transport.is_closing()]

    def close_waiting_past_bound(self):
        live = self.live()
        over = len(live) - self.bound
        if over <= 0:
            return
        waiting = [c for c in live if c is not self and c.waiting()]
        for connection in sorted(waiting, key=lambda c: c.opened)[:over]:
            connection.transport.close()

    async def bounded(self, app, scope, receive, send):
        # this request's own task is among self.tasks
        full = self.bound is not None and (
            len(self.live()) > self.bound or len(self.tasks) > self.bound
        )
        if not full:
            return await app(scope, receive, send)
        err = ApiError(
            503,
            f"the server is serving {self.bound} connections, its most; try again shortly",
            "too_many_connections",
            "server_error",
        )
        headers = {"connection": "close"}
        await JSONResponse(err.body(), err.status, headers)(scope, receive, send)

    def _unset_keepalive_if_required(self):
        if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
            super()._unset_keepalive_if_required()

    def handle_events(self):
        super().handle_events()
        self._unset_keepalive_if_required()  # the headers are in: the request's own time


class RepeatLimit(logging.Filter):
    """At most one record of each message per `window` seconds, and then how many were
    dropped: a flood of one error (1,100 idle connections: "Too many open files") must not
    fill the disk with its log."""

    def __init__(self, window: float = 10.0):
        super().__init__()
        self.window, self.seen = window, {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg)[:200])
        now = time.monotonic()
        last, dropped = self.seen.get(key, (-self.window, 0))
        if now - last < self.window:
            self.seen[key] = (last, dropped + 1)
            return False
        if len(self.seen) > 1000:
            self.seen.clear()
        self.seen[key] = (now, 0)
        if dropped:
            record.msg = (
                f"{record.msg} ({dropped} more like it in {self.window:g} s dropped)"
            )
        return True


# ---- routes ----

router = APIRouter()


@router.get("/health")
async def health(http: HttpRequest):
    server = server_of(http)
    queued = server.batcher.queue.qsize()
    return {"status": "ok", "model": server.config.model_name, "queued": queued}


@router.get("/v1/models")
async def models(http: HttpRequest):
    name = server_of(http).config.model_name
    model = {"id": name, "object": "model", "created": 0, "owned_by": "osum-min"}
    return {"object": "list", "data": [model]}


@router.post("/v1/audio/transcriptions")
@arriving
async def transcriptions(http: HttpRequest):
    server = server_of(http)
    try:
        form = await http.form(max_files=1, max_fields=32)
    except ApiError:
        raise
    except Exception as err:  # noqa: BLE001  malformed multipart
        message = f"not a multipart form ({type(err).__name__}: {err})"
        raise ApiError(400, message, "invalid_form") from None
    fields = form_fields(form)
    server.check_model(fields.get("model"))
    response_format = fields.get("response_format") or "json"
    granularities = transcription_granularities(fields, response_format)
    task = transcription_task(fields, response_format, granularities)
    decoding = transcription_decoding(fields, server.config.max_new_tokens)
    upload = fields["file"]
    name = os.path.basename(upload.filename or "") or "file"
    request = Request(await upload.read(), task=task, config=decoding, name=name)
    request = await server.prepare(request, "file")
    answer = await server.decode(http, request, "file")
    body = transcription_body(answer, response_format, granularities)
    if isinstance(body, str):
        media = {"srt": "application/x-subrip", "vtt": "text/vtt"}.get(
            response_format, "text/plain"
        )
        return PlainTextResponse(body, media_type=f"{media}; charset=utf-8")
    return body


def transcription_granularities(fields: dict, response_format: str) -> list[str]:
    if response_format not in RESPONSE_FORMATS:
        raise ApiError(
            400,
            f"response_format {response_format[:40]!r} is not one of {', '.join(RESPONSE_FORMATS)}",
            "invalid_response_format",
            param="response_format",
        )
    granularities = fields.get("timestamp_granularities", [])
    if bad := [g for g in granularities if g not in ("word", "segment")]:
        raise ApiError(
            400,
            f"timestamp_granularities {bad[0][:40]!r}: word or segment",
            "invalid_granularity",
            param="timestamp_granularities",
        )
    return granularities


def transcription_task(fields: dict, response_format: str, granularities: list[str]):
    """The form's task (srwt when times are asked for, asr otherwise), its prompt if given."""
    subtitled = response_format in ("srt", "vtt")
    timed = subtitled or response_format == "verbose_json" or bool(granularities)
    task_name = fields.get("task") or ("srwt" if timed else "asr")
    if task_name not in TASKS:
        raise ApiError(
            404,
            f"unknown task {task_name[:40]!r}: one of {', '.join(TASKS)}",
            "task_not_found",
            param="task",
        )
    task = TASKS[task_name]
    if (subtitled or granularities) and task.output != "srwt":
        asked = f"{response_format} subtitles" if subtitled else "timestamps"
        raise ApiError(
            400,
            f"{asked} need the srwt task, which times the words; {task_name!r} does not",
            "needs_srwt",
            param="task",
        )
    # OSUM's prompt is the instruction itself (Whisper's is preceding text)
    return replace(task, prompt=fields["prompt"]) if fields.get("prompt") else task


@router.post("/v1/chat/completions")
@arriving
async def chat_completions(http: HttpRequest):
    server = server_of(http)
    body = await http.body()
    fields = await run_in_threadpool(read_chat, body)
    server.check_model(fields.get("model"))
    stream = fields.get("stream", False)
    decoding = chat_decoding(fields, server.config.max_new_tokens)
    logprobs = chat_logprobs(fields)
    request = await run_in_threadpool(chat_request, fields["messages"], decoding)
    request = replace(request, logprobs=logprobs)
    request = await server.prepare(request, "messages")
    reply = Reply(server, request, decoding, fields["stop"])
    if not stream:
        return reply.completion(await server.decode(http, request, "messages"))
    job = server.submit(http, request, stream=True)
    include_usage = fields.get("stream_options", {}).get("include_usage", False)
    return StreamingResponse(
        reply.events(job, include_usage), media_type="text/event-stream"
    )


def read_chat(body: bytes) -> dict:
    """The chat body's fields, checked (in a worker thread: a 10 MB body takes seconds)."""
    try:
        parsed = json.loads(body)
    except RecursionError:
        raise ApiError(
            400, "the body is JSON nested too deeply", "invalid_json"
        ) from None
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the body is not JSON", "invalid_json") from None
    return chat_fields(parsed)


def chat_request(messages: list, decoding: GenerationConfig) -> Request:
    try:
        return to_request(messages, decoding, remote=True, name="input_audio")
    except ConversationError as err:
        raise ApiError(
            400, str(err), "unsupported_conversation", param="messages"
        ) from None


class Reply:
    """One chat answer in OpenAI's shapes: a whole completion, or server-sent chunks."""

    def __init__(
        self,
        server: Server,
        request: Request,
        decoding: GenerationConfig,
        stop: list[str],
    ):
        self.server, self.request, self.decoding, self.stop = (
            server,
            request,
            decoding,
            stop,
        )
        self.created, self.id = int(time.time()), f"chatcmpl-{uuid.uuid4().hex}"
        self.deadline = time.monotonic() + server.config.timeout_s

    def head(self, kind: str) -> dict:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.server.config.model_name,
        }

    def finish(self, answer: Answer | None) -> str:
        """ "stop" at a stop string (answer None) or the eos, "length" at max_tokens."""
        return (
            "stop"
            if answer is None
            else finish_reason(answer, self.decoding, self.server.eos)
        )

    def completion(self, answer: Answer) -> dict:
        text, stopped = until_stop(content(answer), self.stop, final=True)
        message = {"role": "assistant", "content": text}
        finish = self.finish(None if stopped else answer)
        choice = {"index": 0, "message": message, "finish_reason": finish}
        choice["logprobs"] = (
            logprobs_body(
                answer, self.server.pipeline.tokenizer, self.stop, self.server.eos
            )
            if self.request.logprobs is not None
            else None
        )
        body = self.head("chat.completion")
        return {**body, "choices": [choice], "usage": usage(answer)}

    def chunk(self, delta: dict, finish=None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return event({**self.head("chat.completion.chunk"), "choices": [choice]})

    async def events(self, job: Job, include_usage: bool):
        """Server-sent events in OpenAI's chunk format: the role, content deltas, the
        finish, usage, [DONE]."""
        try:
            yield self.chunk({"role": "assistant", "content": ""})
            async for text in self.deltas(job):
                yield text
            if include_usage and (answer := await self.answer(job)) is not None:
                usage_chunk = {**self.head("chat.completion.chunk"), "choices": []}
                yield event({**usage_chunk, "usage": usage(answer)})
        except asyncio.TimeoutError:
            yield event(self.server.timeout().body())
        finally:
            # a client that went away mid-stream: its job is dropped if not yet decoding
            job.cancelled = True
        yield "data: [DONE]\n\n"

    async def answer(self, job: Job) -> Answer | None:
        """The whole answer, for its usage (after a stop string, once decoding ends)."""
        left = max(0.01, self.deadline - time.monotonic())
        answer = await asyncio.wait_for(asyncio.shield(job.answer), left)
        return answer if answer.error is None else None

    async def deltas(self, job: Job):
        """The content deltas as tokens come, then the finish chunk (or an error event)."""
        decoder, text, sent = self.server.pipeline.tokenizer.stream_decoder(), "", ""
        while True:
            left = max(0.01, self.deadline - time.monotonic())
            item = await asyncio.wait_for(job.tokens.get(), left)
            if isinstance(item, Answer) and item.error is not None:
                yield event(request_error(item.error, "messages").body())
                return
            final = isinstance(item, Answer)
            text += decoder.finish() if final else decoder.push(item)
            visible = streamed_text(self.request.task, text, final=final)
            visible, stopped = until_stop(visible, self.stop, final)
            if visible.startswith(sent) and len(visible) > len(sent):
                yield self.chunk({"content": visible[len(sent) :]})
                sent = visible
            if final or stopped:
                yield self.chunk({}, self.finish(None if stopped else item))
                return


def event(body: dict) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def create_app(pipeline: Pipeline, config: ServerConfig = ServerConfig()) -> FastAPI:
    """The FastAPI app serving `pipeline` (a model with a tokenizer); starts the batching worker."""
    app = FastAPI(title="osum-min", docs_url=None, redoc_url=None, openapi_url=None)
    server = app.state.server = Server(pipeline, config)
    app.state.batcher = server.batcher
    app.include_router(router)
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
    app.add_middleware(Guard, server=server)
    return app


def uvicorn_config(app: FastAPI, host: str, port: int, **options) -> uvicorn.Config:
    """uvicorn with the transport bounded: idle and slow clients timed out, connections at
    most max_connections (TimedH11), a repeated log line kept to one."""
    config = app.state.server.config
    # configures uvicorn's loggers: the filter goes on after
    bounded = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=TimedH11,
        timeout_keep_alive=config.read_timeout_s,
        limit_concurrency=config.max_connections,
        backlog=config.max_connections,
        **options,
    )
    for logger in map(logging.getLogger, ("asyncio", "uvicorn.error")):
        if not any(isinstance(f, RepeatLimit) for f in logger.filters):
            logger.addFilter(RepeatLimit())
    return bounded


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
    """Load once and serve until interrupted (infer.py --serve), saying what it does from
    the first second (loading a 7B takes minutes)."""
    from ..model.osum import load_for_inference
    from ..text.tokenizer import tokenizer_or_none

    if config.api_key is None and "OSUM_API_KEY" in os.environ:
        try:
            config = replace(config, api_key=os.environ["OSUM_API_KEY"])
        except ConfigError:
            print("infer.py: error: OSUM_API_KEY is set but empty", file=sys.stderr)
            return 2
    started = time.monotonic()
    tokenizer = tokenizer_or_none(weights)
    if tokenizer is None:
        print(
            f"infer.py: error: {weights}/ has no tokenizer; the server answers in text (convert with "
            "--tokenizer DIR)",
            file=sys.stderr,
        )
        return 2
    print(f"infer.py: loading {weights}/ ...", file=sys.stderr, flush=True)
    try:
        model = load_for_inference(
            weights,
            tokenizer,
            device=device,
            dtype=dtype,
            compile=compile,
            quantize=quantize,
        )
    except (OSError, ValueError, RuntimeError) as err:
        print(
            f"infer.py: error: cannot load {weights}/: {' '.join(str(err).split())}",
            file=sys.stderr,
        )
        return 2
    seconds = time.monotonic() - started
    print(f"infer.py: loaded in {seconds:.1f} s; starting the server", file=sys.stderr)
    pipeline = Pipeline(model, tokenizer, config.batch_size, config.max_audio_seconds)
    # osum-mini answers as itself, never as OSUM
    config = replace(config, model_name=model.config.name)
    app = create_app(pipeline, config)
    uvicorn.Server(uvicorn_config(app, host, port, log_level="info")).run()
    return 0
