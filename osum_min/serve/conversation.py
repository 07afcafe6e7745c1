"""The seed's conversation format, and OpenAI's chat `messages`, as pipeline Requests.

A conversation is a list of messages `{"role": "system" | "user" | "assistant", "content": str | [part, ...]}`
whose parts are `{"type": "audio", "audio": path | bytes | samples}`, `{"type": "audio_url", "audio_url": ...}`,
`{"type": "text", "text": ...}` or (OpenAI) `{"type": "input_audio", "input_audio": {"data": base64, "format"}}`.
Audio with a text instruction is audio analysis (the text is OSUM's prompt); audio alone is voice chat (the `sttc`
task, answered with its reply). The released OSUM hears one clip and answers one turn, with no system prompt, so
a conversation it cannot take (two clips, audio in an earlier turn, an assistant turn to continue, a system
message with text, no audio) is refused with one line saying so, never cut down in silence.

`remote=True` (the server) takes audio only as data a client sent (base64, `data:` URLs): a path, a `file:` or
an `http(s)://` URL is refused, so the server never reads or fetches anything on a client's behalf.
"""

import base64
import binascii
import os

import numpy as np
import torch

from ..model.generate import DEFAULT_DECODING, GenerationConfig
from ..inference.pipeline import Answer, Pipeline, Request, RequestError
from ..text.tasks import TASKS, free_prompt_task

# OpenAI's input_audio formats that libsndfile reads
AUDIO_FORMATS = (
    "wav",
    "mp3",
    "flac",
    "ogg",
)


class ConversationError(ValueError):
    """A conversation OSUM cannot take, or a malformed one; the message is one line."""


def _b64(data, where: str) -> bytes:
    if not isinstance(data, str) or not data.strip():
        raise ConversationError(f"{where}: no base64 audio data")
    try:
        return base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConversationError(
            f"{where}: the audio data is not valid base64"
        ) from None


def _from_url(url, where: str, remote: bool):
    """A `data:` URL's bytes; elsewhere (Python API only) a local path or `file:` URL as a path."""
    # OpenAI nests it: {"url": ...}
    url = url.get("url") if isinstance(url, dict) else url
    if not isinstance(url, str) or not url.strip():
        raise ConversationError(f"{where}: audio_url needs a URL")
    if url.startswith("data:"):
        header, comma, data = url.partition(",")
        if not comma or not header.endswith(";base64"):
            raise ConversationError(
                f"{where}: only base64 data: URLs are taken (data:audio/wav;base64,...)"
            )
        return _b64(data, where)
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if remote or scheme in ("http", "https"):
        raise ConversationError(
            f"{where}: audio must be sent as data (input_audio or a data: URL); this server "
            f"never fetches a URL or reads a path ({url[:60]!r})"
        )
    return url[len("file://") :] if url.startswith("file://") else url


def _audio(part: dict, where: str, remote: bool):
    """The audio of one part: bytes, a path (Python API only) or samples."""
    kind = part["type"]
    if kind == "input_audio":
        audio = part.get("input_audio")
        if not isinstance(audio, dict):
            raise ConversationError(
                f'{where}: input_audio must be {{"data": base64, "format": ...}}'
            )
        if audio.get("format") is not None and audio["format"] not in AUDIO_FORMATS:
            raise ConversationError(
                f"{where}: audio format {audio['format']!r} is not one of "
                f"{', '.join(AUDIO_FORMATS)}"
            )
        return _b64(audio.get("data"), where)
    if kind == "audio_url":
        return _from_url(part.get("audio_url"), where, remote)
    # the seed's {"type": "audio", "audio": path | bytes | array}
    audio = part.get("audio")
    if remote or audio is None:
        raise ConversationError(
            f"{where}: "
            + (
                "send audio as input_audio or a data: URL"
                if remote
                else "an audio part needs its audio"
            )
        )
    return _local_audio(audio, where)


def _local_audio(audio, where: str):
    """The Python API's audio: a path, bytes, samples, or a file open in binary mode (read)."""
    if isinstance(
        audio, (str, os.PathLike, bytes, bytearray, np.ndarray, torch.Tensor)
    ):
        return audio
    if callable(getattr(audio, "read", None)):
        data = audio.read()
        if not isinstance(data, bytes):
            raise ConversationError(
                f"{where}: the file is open as text; open it with 'rb'"
            )
        return data
    raise ConversationError(
        f"{where}: audio is a path, bytes, a file open with 'rb', or samples (a numpy "
        f"array or torch tensor, with sample_rate), not {type(audio).__name__}"
    )


def _parts(message, where: str) -> list[dict]:
    if not isinstance(message, dict) or message.get("role") not in (
        "system",
        "user",
        "assistant",
    ):
        raise ConversationError(
            f'{where}: a message is {{"role": system|user|assistant, "content": ...}}'
        )
    content = message.get("content")
    if content is None or isinstance(content, str):
        return [{"type": "text", "text": content or ""}]
    if not isinstance(content, list) or not all(
        isinstance(p, dict) and "type" in p for p in content
    ):
        raise ConversationError(
            f"{where}: content must be text or a list of typed parts"
        )
    return content


def to_request(
    conversation: list,
    config: GenerationConfig = DEFAULT_DECODING,
    remote: bool = False,
    sample_rate: int | None = None,
    name: str | None = None,
) -> Request:
    """One conversation -> one Request (audio analysis with its text as the prompt, or voice chat); a
    ConversationError naming what OSUM cannot do otherwise. `sample_rate` goes with audio given as samples."""
    if not isinstance(conversation, list) or not conversation:
        raise ConversationError("a conversation is a non-empty list of messages")
    if any(isinstance(m, dict) and m.get("role") == "assistant" for m in conversation):
        raise ConversationError(
            "OSUM answers one turn; it cannot continue a conversation with assistant turns"
        )
    audio, texts = [], []
    for number, message in enumerate(conversation):
        where = f"message {number}"
        parts = _parts(message, where)
        if message["role"] == "system":
            if any(p["type"] != "text" for p in parts) or any(
                str(p.get("text") or "").strip() for p in parts
            ):
                raise ConversationError(
                    f"{where}: OSUM has no system prompt; put the instruction in the user "
                    "message with the audio"
                )
            continue
        if number != len(conversation) - 1:
            raise ConversationError(
                f"{where}: OSUM answers one turn; the audio and the instruction go in one user "
                "message, the last"
            )
        for index, part in enumerate(parts):
            if part["type"] == "text":
                if not isinstance(part.get("text"), str):
                    raise ConversationError(
                        f'{where}, part {index}: a text part needs a string "text"'
                    )
                texts.append(part["text"])
            elif part["type"] in ("audio", "audio_url", "input_audio"):
                audio.append(_audio(part, f"{where}, part {index}", remote))
            else:
                raise ConversationError(
                    f"{where}, part {index}: unknown part type {part['type']!r} "
                    "(audio, audio_url, input_audio or text)"
                )
    if len(audio) != 1:
        raise ConversationError(
            "OSUM hears exactly one audio clip per conversation; this one has "
            f"{len(audio) or 'no'} clip{'s' * (len(audio) != 1)}"
        )
    prompt = "\n".join(t.strip() for t in texts if t.strip())
    task = free_prompt_task(prompt) if prompt else TASKS["sttc"]
    samples = isinstance(audio[0], (np.ndarray, torch.Tensor))
    if samples and sample_rate is None:
        raise ConversationError("audio given as samples needs their sample_rate")
    return Request(
        audio[0], sample_rate if samples else None, task, config=config, name=name
    )


def content(answer: Answer) -> str:
    """What a chat answers: voice chat its reply (the whole output when the model wrote no `<开始回答>`), audio
    analysis its whole output."""
    result = answer.result
    if answer.task.output == "sttc" and result.reply is not None:
        return result.reply
    return result.raw.strip()


def chat(
    pipeline: Pipeline,
    conversations: list[list],
    config: GenerationConfig | None = DEFAULT_DECODING,
    sample_rate: int | None = None,
) -> list[str | Answer]:
    """Every conversation answered, decoded as one batch: its text, or an Answer whose `.error` says why not (a
    conversation OSUM cannot take is refused here, before anything decodes; the others are answered). Arguments of
    the wrong kind are a TypeError or ValueError naming the argument, before anything runs."""
    _check_arguments(pipeline, conversations, config, sample_rate)
    config = DEFAULT_DECODING if config is None else config
    requests, answers = {}, [None] * len(conversations)
    for index, conversation in enumerate(conversations):
        try:
            requests[index] = to_request(
                conversation,
                config,
                sample_rate=sample_rate,
                name=f"conversation {index}",
            )
        except ConversationError as err:
            answers[index] = Answer(
                f"conversation {index}",
                TASKS["sttc"],
                error=RequestError(f"conversation {index}", str(err), "prompt"),
            )
    order = list(requests)
    for answer, index in zip(pipeline([requests[i] for i in order]), order):
        answers[index] = answer if answer.error is not None else content(answer)
    return answers


def _check_arguments(pipeline, conversations, config, sample_rate):
    if not isinstance(pipeline, Pipeline):
        raise TypeError(
            f"chat: pipeline must be a Pipeline, not {type(pipeline).__name__}"
        )
    if pipeline.tokenizer is None:
        raise ConversationError(
            "chat needs a model with a tokenizer (its answers are text)"
        )
    if not isinstance(conversations, (list, tuple)):
        raise TypeError(
            "chat: conversations must be a list of conversations (each a list of messages), "
            f"not {type(conversations).__name__}"
        )
    if config is not None and not isinstance(config, GenerationConfig):
        raise TypeError(
            f"chat: config must be a GenerationConfig (or None), not {type(config).__name__}"
        )
    if sample_rate is None:
        return
    if not isinstance(sample_rate, (int, np.integer)) or isinstance(sample_rate, bool):
        raise TypeError(
            f"chat: sample_rate must be a whole number of Hz, not {sample_rate!r}"
        )
    if sample_rate <= 0:
        raise ValueError(f"chat: sample_rate must be above 0 Hz, not {sample_rate}")
