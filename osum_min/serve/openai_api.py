"""OpenAI's wire formats for OSUM: Answers as response bodies, and errors (the request fields: fields.py).

The server (server.py) reads requests and queues them; this is what the bodies mean: the response formats of
/v1/audio/transcriptions (json, text, srt, vtt, verbose_json with SRWT's words and segments), the chat answer and
its streamed deltas, stop strings, the `usage` counts, and OpenAI-shaped errors
(`{"error": {"message", "type", "param", "code"}}`).
"""

import re

from ..model.generate import DEFAULT_DECODING, GenerationConfig
from ..inference.pipeline import Answer, RequestError
from ..inference.subtitles import cues, subtitles
from ..text.tasks import parse_chat

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
ERROR_STATUS = {"audio": 400, "too_long": 413, "prompt": 422, "decoding": 500}


class ApiError(Exception):
    """A request the server refuses: its status, one line, OpenAI's `type` and `code`, and
    the request field at fault (`param`) where there is one."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        type: str = "invalid_request_error",
        param: str | None = None,
    ):
        super().__init__(" ".join(message.split()))
        self.status, self.code, self.type, self.param = status, code, type, param

    def body(self) -> dict:
        return error_body(str(self), self.type, self.code, self.param)


def error_body(message: str, type: str, code: str, param: str | None = None) -> dict:
    message = " ".join(str(message).split())
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def request_error(err: RequestError, param: str | None = None) -> ApiError:
    """A pipeline's RequestError; `param` is the field that carried the audio or prompt."""
    status = ERROR_STATUS[err.kind]
    code = {
        "audio": "invalid_audio",
        "too_long": "audio_too_long",
        "prompt": "invalid_prompt",
        "decoding": "decoding_failed",
    }[err.kind]
    kind = "server_error" if status == 500 else "invalid_request_error"
    return ApiError(status, str(err), code, kind, None if status == 500 else param)


def megabytes(size: float) -> str:
    """A size as it reads: 0.13 MB, 2.5 MB, 25 MB."""
    return f"{size / 2**20:.2g} MB" if size < 2**20 else f"{size / 2**20:.3g} MB"


def too_large(what: str, size: int, cap: int, param: str | None = None) -> ApiError:
    """413 with both figures at a precision that tells them apart."""
    shown, cap_shown = megabytes(size), megabytes(cap)
    if shown == cap_shown:
        shown, cap_shown = f"{size:,} bytes", f"{cap:,} bytes"
    return ApiError(
        413,
        f"{what} is {shown}; this server takes up to {cap_shown}",
        "upload_too_large",
        param=param,
    )


def usage(answer: Answer) -> dict:
    """prompt_tokens: the prompt's text tokens plus the speech positions of every window (each window is one
    prompt); completion_tokens: every generated id, the eos included."""
    speech = answer.decoded.speech_positions
    prompt = len(answer.prompt_ids) * len(answer.decoded.windows) + speech
    completion = sum(len(ids) for ids in answer.decoded.ids)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def finish_reason(answer: Answer, config: GenerationConfig, eos: int) -> str:
    cut = any(
        len(ids) >= config.max_new_tokens and ids[-1] != eos
        for ids in answer.decoded.ids
    )
    return "length" if cut else "stop"


def streamed_text(task, text: str, final: bool) -> str:
    """The chat content of the text streamed so far: a voice chat shows its reply once `<开始回答>` has come (the
    whole output at the end if it never does), as `content` answers; trailing spaces wait for what follows."""
    if task.output == "sttc":
        reply = parse_chat(task, text).reply
        return reply.strip() if reply is not None else text.strip() if final else ""
    return text.strip() if final else text.lstrip().rstrip()


def until_stop(text: str, stop: list[str], final: bool) -> tuple[str, bool]:
    """The text before the first of the `stop` strings, and whether one came. While
    streaming (not `final`) a tail that may be the start of one is held back too."""
    found = [at for at in (text.find(s) for s in stop) if at >= 0]
    if found:
        return text[: min(found)].rstrip(), True
    if final:
        return text, False
    held = [k for s in stop for k in range(1, len(s)) if text.endswith(s[:k])]
    return text[: len(text) - max(held, default=0)], False


def logprobs_body(answer: Answer, tokenizer, stop: list[str], eos: int) -> dict:
    """`choices[0].logprobs` (Request.logprobs asked): each answer token, the eos left out, with its
    text, UTF-8 bytes, log-probability and alternatives, up to the token that brings a stop string.
    Voice chat lists its whole output: the tokens before `<开始回答>` too."""
    decoded, entries, text = answer.decoded, [], b""
    for ids, scored in zip(decoded.ids, decoded.logprobs):
        for token, (logprob, alternatives) in zip(ids, scored):
            if token == eos:
                break
            entry = token_entry(tokenizer, token, logprob)
            text += bytes(entry["bytes"])
            if any(s in text.decode("utf-8", errors="replace") for s in stop):
                return {"content": entries}
            entry["top_logprobs"] = [
                token_entry(tokenizer, *alternative) for alternative in alternatives
            ]
            entries.append(entry)
    return {"content": entries}


def token_entry(tokenizer, token: int, logprob: float) -> dict:
    piece = tokenizer.decode_bytes([token])
    return {
        "token": piece.decode("utf-8", errors="replace"),
        "logprob": logprob,
        "bytes": list(piece),
    }


def language(text: str) -> str | None:
    """A transcript's language by its script, as OpenAI names it (OSUM transcribes Chinese
    and English): more Han characters than Latin words is Chinese; None without either."""
    han = len(re.findall(r"[\u3400-\u4dbf\u4e00-\u9fff]", text))
    latin = len(re.findall(r"[A-Za-z]+", text))
    return "chinese" if han and han >= latin else "english" if latin else None


def transcription_text(answer: Answer) -> str:
    result = answer.result
    return result.transcript if result.transcript is not None else result.to_text()


def transcription_body(answer: Answer, response_format: str, granularities: list[str]):
    """The response of one transcription in its format: a dict for json and verbose_json, text otherwise."""
    result = answer.result
    if response_format in ("srt", "vtt"):
        return subtitles(result.words or [], vtt=response_format == "vtt")
    if response_format == "text":
        return transcription_text(answer) + "\n"
    body = {"text": transcription_text(answer), "task": answer.task.name}
    body.update(
        {
            key: value
            for key, value in (
                ("labels", result.labels),
                ("reply", result.reply),
                ("issues", result.issues),
            )
            if value
        }
    )
    if response_format == "verbose_json":
        body["language"] = language(body["text"])
        body["duration"] = round(answer.decoded.audio_seconds, 3)
        if result.words is not None:
            if "word" in granularities:
                body["words"] = [
                    {"word": w.text, "start": w.start, "end": w.end}
                    for w in result.words
                ]
            if "segment" in granularities or not granularities:
                body["segments"] = [
                    {"id": number, "start": start, "end": end, "text": text}
                    for number, (start, end, text) in enumerate(cues(result.words))
                ]
    return body
