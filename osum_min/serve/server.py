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
import os
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, replace

try:
    import multipart  # noqa: F401  (starlette reads forms with it)
    import uvicorn
    from fastapi import APIRouter, FastAPI, Request as HttpRequest
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
except ImportError as err:  # infer.py --serve reports it in one line
    raise ImportError(
        "the server needs FastAPI, uvicorn and python-multipart: pip install .[serve] "
        f"({err.name} is missing)",
        name=err.name,
    ) from None

from ..audio import SAMPLE_RATE
from .batcher import Batcher, Job, QueueFull
from ..config_check import check_config
from .conversation import ConversationError, content, to_request
from ..model.generate import DEFAULT_DECODING, GenerationConfig
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
    # how long at most a batch waits for requests the server is still reading and checking
    max_wait_ms: float = 200.0
    # transcriptions' length, and chat's default and upper bound for max_tokens
    max_new_tokens: int = 400

    def __post_init__(self):
        check_config(self)  # whole numbers of at least 1, finite times and sizes above 0


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
        self.eos = pipeline.model.config.eod_id

    def check_model(self, name):
        if name not in (None, "", self.config.model_name):
            raise ApiError(
                404,
                f"model {str(name)[:80]!r} does not exist; this server serves "
                f"{self.config.model_name!r}",
                "model_not_found",
            )

    def check_size(self, request: Request):
        """An upload of bytes: not empty, and within the cap."""
        if not isinstance(request.audio, (bytes, bytearray)):
            return
        if not request.audio:
            raise ApiError(400, f"{request.label}: the audio is empty", "invalid_audio")
        if len(request.audio) > self.max_bytes:
            raise ApiError(
                413,
                f"{request.label}: {len(request.audio) / 2**20:.1f} MB of audio; this "
                f"server takes up to {self.config.max_upload_mb:g} MB",
                "upload_too_large",
            )

    async def prepare(self, request: Request) -> Request:
        """The upload decoded (in a thread) and checked against the caps, and the prompt
        checked, before it queues."""
        self.check_size(request)
        try:
            wav = await run_in_threadpool(
                load_request_audio, request, self.config.max_audio_seconds
            )
            checked = replace(request, audio=wav, sample_rate=SAMPLE_RATE)
            self.pipeline.prompt_ids(checked)
        except RequestError as err:
            raise request_error(err) from None
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

    async def decode(self, http: HttpRequest, request: Request) -> Answer:
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
                    raise ApiError(400, "the client disconnected", "client_disconnected")
                if time.monotonic() > deadline:
                    raise self.timeout()
        finally:
            job.cancelled = not job.answer.done()
        answer = job.answer.result()
        if answer.error is not None:
            raise request_error(answer.error)
        return answer

    def timeout(self) -> ApiError:
        seconds = self.config.timeout_s
        return ApiError(503, f"no answer within {seconds:g} s", "timeout", "server_error")


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
    return JSONResponse(error_body(str(err), err.type, err.code), status_code=err.status)


async def http_error(_, err: HTTPException):
    code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
    return JSONResponse(
        error_body(err.detail, "invalid_request_error", code), status_code=err.status_code
    )


async def validation_error(_, err: RequestValidationError):
    message = f"invalid request: {err.errors()[:1]}"
    return JSONResponse(
        error_body(message, "invalid_request_error", "invalid_request"), status_code=400
    )


async def unexpected(_, err: Exception):
    traceback.print_exc()  # the log keeps the traceback; the client gets one line
    message = f"internal error: {type(err).__name__}: {err}"
    return JSONResponse(error_body(message, "server_error", "internal_error"), status_code=500)


async def guard(http: HttpRequest, call_next):
    """The API key, and the upload cap by Content-Length before any body is read."""
    server = server_of(http)
    try:
        check_key(http, server.config.api_key)
        length = http.headers.get("content-length")
        # base64 and form fields take more than the audio
        if length and length.isdigit() and int(length) > server.max_bytes * 4 // 3 + 2**16:
            raise ApiError(
                413,
                f"the request is {int(length) / 2**20:.1f} MB; this server takes uploads up "
                f"to {server.config.max_upload_mb:g} MB",
                "upload_too_large",
            )
    except ApiError as err:
        return await api_error(http, err)
    return await call_next(http)


def check_key(http: HttpRequest, key: str | None):
    if not http.url.path.startswith("/v1/") or key is None:
        return
    given = http.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
        raise ApiError(
            401, "missing or wrong API key: send Authorization: Bearer KEY", "invalid_api_key"
        )


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
    except Exception as err:  # noqa: BLE001  malformed multipart
        raise ApiError(
            400, f"not a multipart form ({type(err).__name__}: {err})", "invalid_form"
        ) from None
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise ApiError(400, "no audio: send the file in the multipart field `file`", "missing_file")
    server.check_model(form.get("model"))
    response_format = form.get("response_format") or "json"
    granularities = transcription_granularities(form, response_format)
    task = transcription_task(form, response_format, granularities)
    decoding = transcription_decoding(form, server.config.max_new_tokens)
    name = os.path.basename(upload.filename or "") or "file"
    request = Request(await upload.read(), task=task, config=decoding, name=name)
    request = await server.prepare(request)
    answer = await server.decode(http, request)
    body = transcription_body(answer, response_format, granularities)
    if isinstance(body, str):
        media = {"srt": "application/x-subrip", "vtt": "text/vtt"}.get(
            response_format, "text/plain"
        )
        return PlainTextResponse(body, media_type=f"{media}; charset=utf-8")
    return body


def transcription_granularities(form, response_format: str) -> list[str]:
    if response_format not in RESPONSE_FORMATS:
        raise ApiError(
            400,
            f"response_format {response_format!r} is not one of {', '.join(RESPONSE_FORMATS)}",
            "invalid_response_format",
        )
    granularities = form.getlist("timestamp_granularities[]")
    granularities += form.getlist("timestamp_granularities")
    if bad := [g for g in granularities if g not in ("word", "segment")]:
        raise ApiError(
            400,
            f"timestamp_granularities {bad[0]!r}: word or segment",
            "invalid_granularity",
        )
    return granularities


def transcription_task(form, response_format: str, granularities: list[str]):
    """The form's task (srwt when times are asked for, asr otherwise), its prompt if given."""
    subtitled = response_format in ("srt", "vtt")
    timed = subtitled or response_format == "verbose_json" or bool(granularities)
    task_name = form.get("task") or ("srwt" if timed else "asr")
    if task_name not in TASKS:
        raise ApiError(
            404, f"unknown task {task_name!r}: one of {', '.join(TASKS)}", "task_not_found"
        )
    task = TASKS[task_name]
    if (subtitled or granularities) and task.output != "srwt":
        raise ApiError(
            400,
            f"{response_format if subtitled else 'timestamps'} need the srwt task "
            f"(timed words), not {task_name!r}",
            "needs_srwt",
        )
    # OSUM's prompt is the instruction itself (Whisper's is preceding text)
    return replace(task, prompt=form["prompt"]) if form.get("prompt") else task


def transcription_decoding(form, max_new_tokens: int) -> GenerationConfig:
    decoding = replace(DEFAULT_DECODING, max_new_tokens=max_new_tokens)
    temperature = number(form.get("temperature"), "temperature", 0.0, 2.0)
    if not temperature:
        return decoding
    return replace(decoding, num_beams=1, do_sample=True, temperature=temperature)


@router.post("/v1/chat/completions")
@arriving
async def chat_completions(http: HttpRequest):
    server = server_of(http)
    try:
        body = await http.json()
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the body is not JSON", "invalid_json") from None
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        raise ApiError(400, "the body needs `messages`, a list of messages", "invalid_request")
    server.check_model(body.get("model"))
    if body.get("n", 1) != 1:
        raise ApiError(400, "n must be 1: OSUM answers once per request", "invalid_n")
    stream = bool(body.get("stream"))
    decoding = chat_decoding(body, stream, server.config.max_new_tokens)
    try:
        request = to_request(body["messages"], decoding, remote=True, name="input_audio")
    except ConversationError as err:
        raise ApiError(400, str(err), "unsupported_conversation") from None
    request = await server.prepare(request)
    reply = Reply(server, request, decoding)
    if not stream:
        return reply.completion(await server.decode(http, request))
    job = server.submit(http, request, stream=True)
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    return StreamingResponse(reply.events(job, include_usage), media_type="text/event-stream")


class Reply:
    """One chat answer in OpenAI's shapes: a whole completion, or server-sent chunks."""

    def __init__(self, server: Server, request: Request, decoding: GenerationConfig):
        self.server, self.request, self.decoding = server, request, decoding
        self.created, self.id = int(time.time()), f"chatcmpl-{uuid.uuid4().hex}"

    def head(self, kind: str) -> dict:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.server.config.model_name,
        }

    def finish(self, answer: Answer) -> str:
        return finish_reason(answer, self.decoding, self.server.eos)

    def completion(self, answer: Answer) -> dict:
        message = {"role": "assistant", "content": content(answer)}
        choice = {"index": 0, "message": message, "finish_reason": self.finish(answer)}
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
        except asyncio.TimeoutError:
            err = self.server.timeout()
            yield event(error_body(str(err), err.type, err.code))
        finally:
            # a client that went away mid-stream: its job is dropped if not yet decoding
            job.cancelled = True
        if include_usage and job.answer.done() and job.answer.result().error is None:
            usage_chunk = {**self.head("chat.completion.chunk"), "choices": []}
            yield event({**usage_chunk, "usage": usage(job.answer.result())})
        yield "data: [DONE]\n\n"

    async def deltas(self, job: Job):
        """The content deltas as tokens come, then the finish chunk (or an error event)."""
        decoder, text, sent = self.server.pipeline.tokenizer.stream_decoder(), "", ""
        deadline = time.monotonic() + self.server.config.timeout_s
        while True:
            left = max(0.01, deadline - time.monotonic())
            item = await asyncio.wait_for(job.tokens.get(), left)
            if isinstance(item, Answer) and item.error is not None:
                err = request_error(item.error)
                yield event(error_body(str(err), err.type, err.code))
                return
            final = isinstance(item, Answer)
            text += decoder.finish() if final else decoder.push(item)
            visible = streamed_text(self.request.task, text, final=final)
            if visible.startswith(sent) and len(visible) > len(sent):
                yield self.chunk({"content": visible[len(sent) :]})
                sent = visible
            if final:
                yield self.chunk({}, self.finish(item))
                return


def event(body: dict) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def create_app(pipeline: Pipeline, config: ServerConfig = ServerConfig()) -> FastAPI:
    """The FastAPI app serving `pipeline` (a model with a tokenizer); starts the batching worker."""
    app = FastAPI(title="osum-min", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = Server(pipeline, config)
    app.state.batcher = app.state.server.batcher
    app.include_router(router)
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)
    app.middleware("http")(guard)
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
    config = replace(config, api_key=config.api_key or os.environ.get("OSUM_API_KEY") or None)
    uvicorn.run(create_app(pipeline, config), host=host, port=port, log_level="info")
    return 0
