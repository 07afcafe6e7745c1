"""OpenAI's wire formats for OSUM: request fields to decoding settings, Answers to response bodies, and errors.

The server (server.py) reads requests and queues them; this is what the bodies mean: the response formats of
/v1/audio/transcriptions (json, text, srt, vtt, verbose_json with SRWT's words and segments), the chat answer and
its streamed deltas, the `usage` counts, and OpenAI-shaped errors (`{"error": {"message", "type", "code"}}`).
"""

from dataclasses import replace

from ..model.generate import DEFAULT_DECODING, GenerationConfig
from ..inference.pipeline import Answer, RequestError
from ..inference.subtitles import cues, subtitles
from ..text.tasks import parse_chat

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
ERROR_STATUS = {"audio": 400, "too_long": 413, "prompt": 422, "decoding": 500}


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str, type: str = "invalid_request_error"):
        super().__init__(" ".join(message.split()))
        self.status, self.code, self.type = status, code, type


def error_body(message: str, type: str, code: str) -> dict:
    return {"error": {"message": " ".join(str(message).split()), "type": type, "code": code}}


def request_error(err: RequestError) -> ApiError:
    status = ERROR_STATUS[err.kind]
    return ApiError(
        status,
        str(err),
        {
            "audio": "invalid_audio",
            "too_long": "audio_too_long",
            "prompt": "invalid_prompt",
            "decoding": "decoding_failed",
        }[err.kind],
        "server_error" if status == 500 else "invalid_request_error",
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
    cut = any(len(ids) >= config.max_new_tokens and ids[-1] != eos for ids in answer.decoded.ids)
    return "length" if cut else "stop"


def streamed_text(task, text: str, final: bool) -> str:
    """The chat content of the text streamed so far: a voice chat shows its reply once `<开始回答>` has come (the
    whole output at the end if it never does), as `content` answers; trailing spaces wait for what follows."""
    if task.output == "sttc":
        reply = parse_chat(task, text).reply
        return reply.strip() if reply is not None else text.strip() if final else ""
    return text.strip() if final else text.lstrip().rstrip()


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
        body["duration"] = round(answer.decoded.audio_seconds, 3)
        if result.words is not None:
            if "word" in granularities:
                body["words"] = [
                    {"word": w.text, "start": w.start, "end": w.end} for w in result.words
                ]
            if "segment" in granularities or not granularities:
                body["segments"] = [
                    {"id": number, "start": start, "end": end, "text": text}
                    for number, (start, end, text) in enumerate(cues(result.words))
                ]
    return body


def number(value, name: str, low: float, high: float, integer: bool = False):
    """A request's numeric field, checked (None when absent); ApiError 400 otherwise."""
    if value is None or value == "":
        return None
    try:
        parsed = float(value)
    except (TypeError, ValueError):
        parsed = None
    if (
        parsed is None
        or isinstance(value, bool)
        or not low <= parsed <= high
        or (integer and parsed % 1)
    ):
        raise ApiError(
            400,
            f"{name} must be a{'n integer' if integer else ' number'} from {low:g} to {high:g}, "
            f"got {str(value)[:40]!r}",
            f"invalid_{name}",
        )
    return int(parsed) if integer else parsed


def chat_decoding(body: dict, stream: bool, max_new_tokens: int) -> GenerationConfig:
    """OSUM's default (beam 4, penalty 1.05); sampling when `temperature` > 0 is given; greedy when streaming
    (beam search knows its tokens only at the end)."""
    config = replace(DEFAULT_DECODING, max_new_tokens=max_new_tokens)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if (limit := number(max_tokens, "max_tokens", 1, max_new_tokens, integer=True)) is not None:
        config = replace(config, max_new_tokens=limit)
    temperature = number(body.get("temperature"), "temperature", 0.0, 2.0)
    top_p = number(body.get("top_p"), "top_p", 1e-6, 1.0)
    seed = number(body.get("seed"), "seed", 0, 2**63 - 1, integer=True)
    if temperature:
        config = replace(
            config,
            num_beams=1,
            do_sample=True,
            temperature=temperature,
            top_p=top_p or 1.0,
            seed=seed,
        )
    elif stream:
        config = replace(config, num_beams=1)
    return config
