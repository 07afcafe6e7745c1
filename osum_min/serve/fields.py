"""The fields of the server's requests: each of one type, in range, and mapped onto OSUM's
decoding, or refused with a 400 naming it (`param`).

Strict, because a loose reading answers something else than was asked: `"stream": "false"`
is a string, not false; a seed of 2**53 + 1 read through a float is 2**53's sample. JSON
numbers arrive exact (Python's json reads whole numbers as ints), so a seed is taken as an
int or refused. A field OpenAI defines that OSUM's decoding cannot honour is taken only at
the value that changes nothing (penalties 0, an empty logit_bias, ...), so no client believes
it got what it did not; a field OpenAI does not define is refused as OpenAI refuses it.
"""

import re
import reprlib
from dataclasses import replace

from ..config_check import ConfigError
from ..inference.pipeline import MAX_TOP_LOGPROBS
from ..model.generate import DEFAULT_DECODING, GenerationConfig
from .openai_api import ApiError

CHAT_FIELDS = {  # name: its JSON type(s); null is the same as absent
    "model": str,
    "messages": list,
    "stream": bool,
    "stream_options": dict,
    "n": int,
    "max_tokens": int,
    "max_completion_tokens": int,
    "temperature": float,
    "top_p": float,
    "seed": int,
    "stop": (str, list),
    "user": str,  # OpenAI's end-user id for abuse reports: no effect on the answer
    "logprobs": bool,
    "top_logprobs": int,
    "presence_penalty": float,
    "frequency_penalty": float,
    "logit_bias": dict,
    "response_format": dict,
}
PENALTIES = (
    "OSUM's decoding has transformers' repetition penalty (scores of every token "
    "seen divided by it), not OpenAI's additive presence and frequency penalties"
)
NO_EFFECT = {  # OpenAI's fields OSUM cannot honour: the value that asks for nothing, why
    "presence_penalty": (0, PENALTIES),
    "frequency_penalty": (0, PENALTIES),
    "logit_bias": ({}, "OSUM's decoding takes no logit bias"),
    "response_format": (
        {"type": "text"},
        "OSUM answers in text; it cannot be held to JSON",
    ),
}
TRANSCRIPTION_FIELDS = (
    "file",
    "model",
    "response_format",
    "timestamp_granularities[]",
    "timestamp_granularities",
    "task",
    "prompt",
    "temperature",
)
FORM_REFUSED = {  # OpenAI's transcription fields OSUM cannot honour: why
    "language": "OSUM has no language setting: it transcribes the language it hears",
    "stream": "transcriptions are answered whole; stream a chat completion instead",
}
MAX_STOPS = 4  # OpenAI's own limit
# a number as JSON writes it (Python's float() also takes "1_0", "inf" and "nan")
JSON_NUMBER = re.compile(r"-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?")
TYPE_NAMES = {
    str: "a string",
    list: "an array",
    dict: "an object",
    bool: "true or false",
    int: "a whole number",
    float: "a number",
}
# GenerationConfig's fields: the request field that sets them
DECODING_PARAMS = {"max_new_tokens": "max_tokens", "temperature": "temperature"}
_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlevel = 40, 40, 2


def shown(value) -> str:
    """A client's value in a message: short, and never deep (a body nested 10,000
    levels would overflow repr)."""
    return _short.repr(value)


def of_type(value, kind) -> bool:
    if isinstance(kind, tuple):
        return any(of_type(value, k) for k in kind)
    if kind in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, (int, float) if kind is float else kind)


def json_type(value) -> str:
    if value is None:
        return "null"
    return next(
        (name for kind, name in TYPE_NAMES.items() if of_type(value, kind)),
        type(value).__name__,
    )


def invalid(name: str, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, f"{name}: {message}", code, param=name)


def typed_fields(body) -> dict:
    """A chat body's fields, each of its type; null ones left out."""
    if not isinstance(body, dict):
        raise ApiError(
            400,
            f"the body must be a JSON object, not {json_type(body)}",
            "invalid_json",
        )
    for name, value in body.items():
        if name not in CHAT_FIELDS:
            raise invalid(
                shown(name),
                f"unknown field; this server takes {', '.join(CHAT_FIELDS)}",
                "unknown_parameter",
            )
        kind = CHAT_FIELDS[name]
        if value is not None and not of_type(value, kind):
            kinds = kind if isinstance(kind, tuple) else (kind,)
            wanted = " or ".join(TYPE_NAMES[k] for k in kinds)
            raise invalid(
                name, f"must be {wanted}, not {json_type(value)}", "invalid_type"
            )
    for name, (nothing, why) in NO_EFFECT.items():
        if body.get(name) not in (None, nothing):
            raise invalid(
                name,
                f"{shown(body[name])} is not supported ({why}); leave it out",
                "unsupported_parameter",
            )
    return {name: value for name, value in body.items() if value is not None}


def chat_fields(body) -> dict:
    """The body's fields, checked: types, `messages`, `n`, `stream_options` and `stop`."""
    fields = typed_fields(body)
    if "messages" not in fields:
        raise invalid(
            "messages", "missing: the body needs messages, a list of messages"
        )
    if fields.get("n", 1) != 1:
        raise invalid("n", f"{fields['n']}: must be 1 (OSUM answers once per request)")
    options = fields.get("stream_options", {})
    if unknown := set(options) - {"include_usage"}:
        raise invalid(
            "stream_options", f"unknown option {shown(min(unknown))} (include_usage)"
        )
    if not isinstance(options.get("include_usage", False), bool):
        raise invalid("stream_options", "include_usage must be true or false")
    if options and not fields.get("stream"):
        raise invalid("stream_options", "only with stream: true")
    fields["stop"] = stops(fields.get("stop"))
    return fields


def stops(stop) -> list[str]:
    """`stop` as a list of up to four non-empty strings."""
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if len(stop) > MAX_STOPS or not all(isinstance(s, str) and s for s in stop):
        raise invalid("stop", f"up to {MAX_STOPS} non-empty strings, got {shown(stop)}")
    return stop


def chat_decoding(fields: dict, max_new_tokens: int) -> GenerationConfig:
    """OSUM's default (beam 4, penalty 1.05); sampling when `temperature` > 0 is given; greedy
    when streaming (beam search knows its tokens only at the end)."""
    changes = {"max_new_tokens": max_new_tokens}
    limit = fields.get("max_completion_tokens", fields.get("max_tokens"))
    if limit is not None:
        if not 1 <= limit <= max_new_tokens:
            raise invalid("max_tokens", f"{limit}: must be from 1 to {max_new_tokens}")
        changes["max_new_tokens"] = limit
    temperature = ranged(fields.get("temperature"), "temperature", 0.0, 2.0)
    if temperature:
        changes.update(num_beams=1, do_sample=True, temperature=temperature)
        changes.update(top_p=fields.get("top_p", 1.0), seed=fields.get("seed"))
    elif "top_p" in fields:
        raise invalid("top_p", "applies when sampling: give a temperature above 0 too")
    elif fields.get("stream"):
        changes["num_beams"] = 1
    return decoding(changes)


def chat_logprobs(fields: dict) -> int | None:
    """How many alternatives each answer token lists (`top_logprobs`), None without `logprobs`."""
    top = fields.get("top_logprobs")
    if not fields.get("logprobs"):
        if top:
            raise invalid("top_logprobs", "lists alternatives with logprobs: true only")
        return None
    if fields.get("stream"):
        raise invalid(
            "logprobs",
            "the log probabilities are scored once the answer is whole: ask without stream",
        )
    return ranged(top or 0, "top_logprobs", 0, MAX_TOP_LOGPROBS)


def transcription_decoding(form, max_new_tokens: int) -> GenerationConfig:
    """OSUM's default; sampling at a `temperature` above 0."""
    changes = {"max_new_tokens": max_new_tokens}
    temperature = ranged(
        form_number(form.get("temperature"), "temperature"), "temperature", 0, 2
    )
    if temperature:
        changes.update(num_beams=1, do_sample=True, temperature=temperature)
    return decoding(changes)


def ranged(value, name: str, low: float, high: float):
    if value is not None and not low <= value <= high:
        raise invalid(name, f"{shown(value)}: must be from {low:g} to {high:g}")
    return value


def form_number(text: str | None, name: str) -> float | None:
    """A form field's number, written as JSON writes numbers (None when absent)."""
    if text in (None, ""):
        return None
    if not JSON_NUMBER.fullmatch(text):
        raise invalid(name, f"{shown(text)} is not a number", "invalid_type")
    return float(text)


def decoding(changes: dict) -> GenerationConfig:
    """DEFAULT_DECODING with `changes`, through GenerationConfig's own checks."""
    try:
        return replace(DEFAULT_DECODING, **changes)
    except ConfigError as err:
        name = DECODING_PARAMS.get(err.field, err.field)
        raise ApiError(400, str(err), "invalid_value", param=name) from None


def form_fields(form) -> dict[str, str | list[str]]:
    """A transcription form's fields: the file an upload, every other field text, once
    (timestamp granularities a list)."""
    for name in form:
        if name in FORM_REFUSED:
            raise invalid(
                name, f"not supported ({FORM_REFUSED[name]})", "unsupported_parameter"
            )
        if name not in TRANSCRIPTION_FIELDS:
            raise invalid(
                shown(name),
                f"unknown field; this server takes {', '.join(TRANSCRIPTION_FIELDS)}",
                "unknown_parameter",
            )
    fields = {}
    for name in TRANSCRIPTION_FIELDS[1:]:
        values = form.getlist(name)
        if not all(isinstance(v, str) for v in values):
            raise invalid(name, "must be text, not a file", "invalid_type")
        if name.startswith("timestamp_granularities"):
            fields.setdefault("timestamp_granularities", []).extend(values)
        elif len(values) > 1:
            raise invalid(name, f"given {len(values)} times; give it once")
        elif values:
            fields[name] = values[0]
    files = form.getlist("file")
    if len(files) != 1 or isinstance(files[0], str):
        raise invalid("file", "no audio: send the file in the multipart field `file`")
    fields["file"] = files[0]
    return fields
